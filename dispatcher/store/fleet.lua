-- Which workers and consumers are alive, judged by Redis: keys with a TTL.
--
-- Called as  EVALSHA <sha> 1 <prefix> <command> <args...>  (dispatcher/store/fleet.py).
-- A process is alive while its heartbeat key exists; nobody compares one host's
-- clock with another's. Each process id carries a random nonce, so two containers
-- whose processes are all pid 1 on the same hostname never share one. What a
-- consumer that stopped still held in its in-flight list goes back to the queue
-- (`reap`); the pop that fills those lists is broker.lua's.
--
-- Keys (P = the key prefix; Q = the Celery queue's name, which the caller passes in
-- the names it gives: the in-flight keys live beside kombu's, outside P):
--   P:workers                    set     names of workers seen (pruned once their key is gone)
--   P:worker:{name}              string  a worker's heartbeat (TTL), holding its consumer id:
--                                        `dispatcher status`, health checks
--   P:consumer:{id}              string  a consumer process's heartbeat (TTL), refreshed by
--                                        the worker's scheduler thread (and on every poll:
--                                        broker.lua)
--   _dispatcher.inflight.Q       set     the in-flight list of every consumer of the queue
--   _dispatcher.inflight.Q.{id}  list    what consumer {id} popped that is not a kombu
--                                        message, until its dead letter is written
--   P:served:{dialer}            string  a dialer some live worker serves (TTL: the heartbeat's)
--   P:lanes                      set     every lane a message was pushed onto (execution.lua);
--                                        an empty one is forgotten by `adopt`
--   Q.{dialer}.{lane}, Q         lists   the lanes a stopped consumer's in-flight messages
--                                        go back to (execution.lua)
--   Q.list.{dialer}.{lane}       list    a dialer's lanes of leads for a list (execution.lua)

local P = KEYS[1]
local cmd = ARGV[1]

if cmd == 'beat' then
  -- ARGV: worker name, consumer id, ttl, then the dialers the worker serves. The worker
  -- and its consumer are alive, and those dialers' lanes have a worker.
  local ttl = tonumber(ARGV[4])
  redis.call('SET', P .. ':worker:' .. ARGV[2], ARGV[3], 'EX', ttl)
  redis.call('SADD', P .. ':workers', ARGV[2])
  redis.call('SET', P .. ':consumer:' .. ARGV[3], '1', 'EX', ttl)
  for i = 5, #ARGV do redis.call('SET', P .. ':served:' .. ARGV[i], '1', 'EX', ttl) end
  return 1

elseif cmd == 'adopt' then
  -- ARGV: lane, its dialer, in-flight list, registry, max. A lane whose dialer no live
  -- worker serves (a renamed dialer; a dialers file that reached producers first) is
  -- never polled: the caller, a worker that does not know the dialer, takes up to `max`
  -- of its messages into its in-flight list (as the broker's pop would: if it stops,
  -- `reap` puts them back) and hands each job back to wait for a worker that knows the
  -- dialer (execution.lua `await_dialer`), or letters it. Returns the messages taken;
  -- none while the dialer is served. An empty lane leaves P:lanes.
  local lane, inflight = ARGV[2], ARGV[4]
  if redis.call('EXISTS', P .. ':served:' .. ARGV[3]) == 1 then return {} end
  local out = {}
  for _ = 1, tonumber(ARGV[6]) do
    local item = redis.call('RPOPLPUSH', lane, inflight)
    if not item then break end
    table.insert(out, item)
  end
  if #out > 0 then redis.call('SADD', ARGV[5], inflight) end
  if redis.call('LLEN', lane) == 0 then redis.call('SREM', P .. ':lanes', lane) end
  return out

elseif cmd == 'settled' then
  -- ARGV: in-flight list, message, lane ('' for none). A message `adopt` took is
  -- handled: it leaves the list; or, given a lane, it goes back to that lane's
  -- consuming end (its handling failed: Redis refused a write).
  local n = redis.call('LREM', ARGV[2], 1, ARGV[3])
  if n > 0 and ARGV[4] ~= '' then redis.call('RPUSH', ARGV[4], ARGV[3]) end
  return n

elseif cmd == 'reap' then
  -- ARGV: consumer id, registry, in-flight list, queue. If the consumer's heartbeat
  -- is gone, its in-flight messages go back to their lanes (an envelope's routing key
  -- names its list; a lane of this queue only) and its list is forgotten.
  -- Returns how many were returned, or -1 if the consumer is alive.
  if redis.call('EXISTS', P .. ':consumer:' .. ARGV[2]) == 1 then return -1 end
  local queue = ARGV[5]
  local n = 0
  while true do
    local item = redis.call('RPOP', ARGV[4])
    if not item then break end
    local target = queue
    local ok, data = pcall(cjson.decode, item)
    if ok and type(data) == 'table' and type(data.properties) == 'table'
        and type(data.properties.delivery_info) == 'table' then
      local key = data.properties.delivery_info.routing_key
      if type(key) == 'string' and string.sub(key, 1, #queue + 1) == queue .. '.' then
        target = key
      end
    end
    redis.call('RPUSH', target, item)  -- the consuming end: it is next
    n = n + 1
  end
  redis.call('SREM', ARGV[3], ARGV[4])
  return n

elseif cmd == 'alive' then
  -- Read-only: the names of the workers whose heartbeat lives.
  local out = {}
  for _, name in ipairs(redis.call('SMEMBERS', P .. ':workers')) do
    if redis.call('EXISTS', P .. ':worker:' .. name) == 1 then table.insert(out, name) end
  end
  return out

elseif cmd == 'prune' then
  -- Forgets workers whose heartbeat is gone. Returns how many.
  local n = 0
  for _, name in ipairs(redis.call('SMEMBERS', P .. ':workers')) do
    if redis.call('EXISTS', P .. ':worker:' .. name) == 0 then
      redis.call('SREM', P .. ':workers', name)
      n = n + 1
    end
  end
  return n
end

return redis.error_reply('fleet.lua: unknown command ' .. tostring(cmd))
