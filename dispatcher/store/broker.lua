-- The broker's reliable pop: kombu's message taken and recorded in one step.
--
-- Called as  EVALSHA <sha> 1 <prefix> <command> <args...>  (dispatcher/store/broker.py;
-- the consumer of workers/transport.py sends the `fetch` command itself, on its own
-- connection). Stock kombu pops a message with BRPOP and records it as unacknowledged
-- in a second round trip: a worker killed between the two lost the message. Here the
-- pop and the record are one script, and a message is always in a lane, in kombu's
-- unacked record, or in a consumer's in-flight list. Liveness (whose in-flight list goes
-- back to the queue when its consumer stops) is fleet.lua's.
--
-- Keys (P = the key prefix; Q = the Celery queue's name, which the caller passes in
-- the names it gives: the in-flight keys live beside kombu's, outside P):
--   P:consumer:{id}              string  a consumer process's heartbeat (TTL), refreshed on
--                                        every poll (fleet.lua reads it)
--   _dispatcher.inflight.Q       set     the in-flight list of every consumer of the queue
--   _dispatcher.inflight.Q.{id}  list    what consumer {id} popped that is not a kombu
--                                        message, until its dead letter is written
--   unacked, unacked_index       hash, zset  kombu's own record of delivered messages
--                                        (written here on the pop, the index scored
--                                        with Redis TIME; the visibility sweep of
--                                        workers/acks.py redelivers what stays
--                                        in it longer than the timeout, by Redis TIME)
--   Q.{dialer}.{lane}, Q.list.{dialer}.{lane}, Q  lists  the lanes messages are popped
--                                        from (execution.lua): leads for an agent, for a
--                                        list, and messages of older versions
--   P:pause:{server}, P:rate:{server}  read  a paused dialer's lanes, and those of a dialer
--                                        whose rate-limit slots are taken for the next
--                                        quarter second, are skipped: their jobs wait
--                                        in Redis, not in a sleeping worker thread; so are
--                                        the list lanes of a dialer whose list jobs alone
--                                        are paused (server "{dialer}:list")

local P = KEYS[1]
local cmd = ARGV[1]

if cmd == 'fetch' then
  -- ARGV: consumer id, ttl, registry, in-flight list, kombu's unacked hash, kombu's
  -- unacked index, the most messages m to take, the number k of deferred acks, k
  -- delivery tags, then per dialer, in the order to serve them (the caller rotates
  -- it: no dialer starves another): its name, its number of lanes n, and n pairs (a
  -- lane list, the server of a second pause that gates it or ''), in priority order
  -- (realtime lanes first).
  --
  -- One round trip per poll, doing everything kombu needs done around a pop:
  -- * the acks deferred since the last poll are written (kombu's unacked entries of
  --   the tags removed);
  -- * the consumer registers again (heartbeat + its in-flight list in the registry: a
  --   reaper may have given it up during a stall);
  -- * what its in-flight list still holds (an item whose dead letter could not be
  --   written) is handed out again;
  -- * else messages are taken, first lane of the first dialer that is neither paused
  --   nor out of rate-limit slots first: each kombu envelope goes straight into
  --   kombu's unacked hash and index (as kombu's own QoS.append would record it; the
  --   visibility timeout redelivers it if this consumer dies). Up to m of them, as
  --   many as the consumer has free slots, but one only from a dialer with a rate
  --   limit (its slots are handed out one claim at a time). Anything that is not an
  --   envelope goes into the in-flight list, for the consumer to dead-letter: alone,
  --   or (after envelopes taken in this poll) on the next poll.
  -- A message is thus always in a lane, in kombu's unacked record, or in an in-flight list.
  -- Returns {item, 'held' | dialer name}, {item, dialer, 'recorded', item, dialer,
  -- 'recorded', ...} (envelopes, in the order taken), {false, 'gated', seconds until a
  -- dialer whose jobs wait opens again}, or {false, 'empty'}.
  local inflight, unacked, index = ARGV[5], ARGV[6], ARGV[7]
  local most = tonumber(ARGV[8])
  local acks = tonumber(ARGV[9])
  for a = 10, 9 + acks do
    redis.call('ZREM', index, ARGV[a])
    redis.call('HDEL', unacked, ARGV[a])
  end
  redis.call('SET', P .. ':consumer:' .. ARGV[2], '1', 'EX', tonumber(ARGV[3]))
  redis.call('SADD', ARGV[4], inflight)
  local held = redis.call('LINDEX', inflight, -1)
  if held then return {held, 'held'} end
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
  local i = 10 + acks
  local soonest = nil  -- when a gated dialer with waiting jobs opens again
  local taken = {}
  while i <= #ARGV and #taken < 3 * most do
    local dialer, n = ARGV[i], tonumber(ARGV[i + 1])
    local untl = tonumber(redis.call('HGET', P .. ':pause:' .. dialer, 'until') or '0')
    local rate = redis.call('GET', P .. ':rate:' .. dialer)
    local tat = tonumber(rate or '0')
    -- More than a quarter second of slots taken: a job popped now would hold a
    -- worker thread asleep for its slot, a thread another dialer could use.
    local opens = math.max(untl, tat - 0.25)
    -- A lane gated by a second pause that is running now is skipped (as its dialer's
    -- would be); when it opens again, if it holds jobs, counts for `soonest`.
    local function gate_of(j)
      local scope = ARGV[i + 2 * j + 1]
      if scope == '' then return now end
      return tonumber(redis.call('HGET', P .. ':pause:' .. scope, 'until') or '0')
    end
    if opens <= now then
      local room = most - #taken / 3
      if rate then room = math.min(room, 1) end
      for j = 1, n do
        local lane = ARGV[i + 2 * j]
        local gated = gate_of(j)
        if gated > now and redis.call('LLEN', lane) > 0
            and (soonest == nil or gated < soonest) then
          soonest = gated
        end
        while room > 0 and gated <= now do
          local item = redis.call('RPOP', lane)
          if not item then break end
          local ok, env = pcall(cjson.decode, item)
          local props = ok and type(env) == 'table' and env.properties
          local info = type(props) == 'table' and props.delivery_info
          if type(info) == 'table' and type(props.delivery_tag) == 'string'
              and type(env.body) == 'string' then
            local exchange = info.exchange
            local key = info.routing_key
            if type(exchange) ~= 'string' then exchange = '' end
            if type(key) ~= 'string' then key = lane end
            redis.call('HSET', unacked, props.delivery_tag,
                       '[' .. item .. ',' .. cjson.encode(exchange) .. ','
                       .. cjson.encode(key) .. ']')
            redis.call('ZADD', index, now, props.delivery_tag)
            taken[#taken + 1] = item
            taken[#taken + 1] = dialer
            taken[#taken + 1] = 'recorded'
            room = room - 1
          else
            redis.call('LPUSH', inflight, item)
            if #taken > 0 then return taken end
            return {item, dialer}
          end
        end
      end
    else
      for j = 1, n do
        if redis.call('LLEN', ARGV[i + 2 * j]) > 0 then
          local at = math.max(opens, gate_of(j))
          if soonest == nil or at < soonest then soonest = at end
        end
      end
    end
    i = i + 2 + 2 * n
  end
  if #taken > 0 then return taken end
  if soonest ~= nil then return {false, 'gated', string.format('%.3f', soonest - now)} end
  return {false, 'empty'}

elseif cmd == 'record' then
  -- ARGV: kombu's unacked hash, kombu's unacked index, delivery tag, the unacked
  -- entry, the in-flight list (or ''), the raw item to clear from it. Records a
  -- message handed out outside `fetch` (an envelope given out again from an
  -- in-flight list) as kombu's QoS.append would, but stamped with Redis's clock as
  -- `fetch` stamps it: the visibility sweep judges age by that clock (never a host's).
  local clock = redis.call('TIME')
  redis.call('HSET', ARGV[2], ARGV[4], ARGV[5])
  redis.call('ZADD', ARGV[3], tonumber(clock[1]) + tonumber(clock[2]) / 1000000, ARGV[4])
  if ARGV[6] ~= '' then redis.call('LREM', ARGV[6], 1, ARGV[7]) end
  return 1

end

return redis.error_reply('broker.lua: unknown command ' .. tostring(cmd))
