-- The outbox of outcome notifications: claiming, settling and managing its events.
--
-- Called as  EVALSHA <sha> 1 <prefix> <command> <args...>
-- (dispatcher/store/outbox.py wraps each command). Events are written by the job's
-- outcome commands in execution.lua (`notify` there), in the same step as the outcome;
-- this script is everything after that: the senders (workers/notifier.py) claim due
-- events with a lease, then settle each (delivered, failed attempt, released), and
-- operators list, retry, purge and erase them.
--
-- Time is Redis's own clock (TIME): leases, retry times and the retry window mean the
-- same on every host.
--
-- Keys (P = the key prefix):
--   P:notify:event:{eid}  hash    one event: job_id, type, state, created_at, url,
--                                 idempotency_key, dialer, lead_id, list_id, campaign,
--                                 existing_lead_id, reason, error (what the receiver gets),
--                                 attempts, due_since (when it became the job's first
--                                 undelivered event: its retry window starts then), claim
--                                 (the token of the sender holding it), next_at, last_error,
--                                 last_status, status (failed once the window is over),
--                                 failed_at. No TTL: a pending event must not vanish; a
--                                 failed one is removed by `expire_failed` (retention).
--   P:notify:job:{id}     list    the job's undelivered event ids (pending and failed),
--                                 oldest first; only the first is ever due, so a job's
--                                 events arrive in order. Removed with its last event.
--   P:notify:due          zset    events that may be sent, by when: a claim moves the score
--                                 to the end of its lease (a sender that died lets it come
--                                 due again), a failed attempt to the next retry
--   P:notify:pending      zset    every undelivered event not failed, by created_at (the
--                                 backlog, and its oldest)
--   P:notify:failed       zset    failed events (retried for the whole window in vain), by
--                                 when they failed: kept for `dispatcher notify retry`
--   P:stats               hash    counters notify:delivered, notify:failed (events that
--                                 became failed), notify:attempts_failed, notify:retried,
--                                 notify:purged, notify:expired, notify:forgotten
--                                 (notify:created is counted by execution.lua)
--
-- An event's life:
--
--   (written, first of its job) --> due --claim--> claimed --delivered--> (gone)
--   (written behind another)    --> waiting: due when the events before it are gone
--   claimed --attempt_failed--> due later (backoff) | failed (the window is over)
--   claimed --release--> due later (not sent: its receiver was busy; no attempt used)
--   claimed, lease over --> due again (the sender vanished): claimed by another
--   failed --retry--> due (a new window) ; failed --purge/expire_failed--> (gone)
--   any --forget--> (gone) (its job's phone was erased)
--
-- A `delivered` applies whoever holds the claim (the receiver has it: a fact); the
-- other settlements apply only with the claim's token (a sender whose lease ran out
-- and was overtaken leaves the decision to the new holder).

local P = KEYS[1]
local cmd = ARGV[1]

redis.replicate_commands()  -- TIME before writes (Redis < 7); a no-op on 7
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

local function fmt(x) return string.format('%.6f', x) end
local function k_event(eid) return P .. ':notify:event:' .. eid end
local function k_job(id) return P .. ':notify:job:' .. id end
local k_due, k_pending, k_failed = P .. ':notify:due', P .. ':notify:pending', P .. ':notify:failed'
local k_stats = P .. ':stats'

-- The fields a sender needs, in this order (dispatcher/store/outbox.py CLAIMED).
local FIELDS = {'job_id', 'type', 'state', 'created_at', 'url', 'idempotency_key', 'dialer',
                'lead_id', 'list_id', 'campaign', 'existing_lead_id', 'reason', 'error',
                'attempts', 'due_since'}

-- The job's first undelivered event (if any, and not failed) becomes due now.
local function promote(job_id)
  local head = redis.call('LINDEX', k_job(job_id), 0)
  if not head then return end
  local ek = k_event(head)
  if redis.call('EXISTS', ek) == 0 then
    -- An id whose event is gone (never expected): drop it, look at the next.
    redis.call('LPOP', k_job(job_id))
    return promote(job_id)
  end
  if redis.call('HGET', ek, 'status') == 'failed' then return end
  if redis.call('ZSCORE', k_due, head) then return end
  redis.call('HSET', ek, 'due_since', fmt(now))
  redis.call('HDEL', ek, 'claim', 'next_at')
  redis.call('ZADD', k_due, fmt(now), head)
end

-- Remove one event from everything; the job's next one becomes due. Its job id.
local function remove(eid)
  local ek = k_event(eid)
  local job_id = redis.call('HGET', ek, 'job_id')
  redis.call('DEL', ek)
  redis.call('ZREM', k_due, eid)
  redis.call('ZREM', k_pending, eid)
  redis.call('ZREM', k_failed, eid)
  if job_id then
    redis.call('LREM', k_job(job_id), 1, eid)
    promote(job_id)
  end
  return job_id
end

if cmd == 'claim' then
  -- ARGV: limit, lease_s, token. Claims up to `limit` due events for lease_s; returns
  -- per event: eid, then the FIELDS values.
  local limit, lease, token = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
  local out = {}
  local ids = redis.call('ZRANGEBYSCORE', k_due, '-inf', fmt(now), 'LIMIT', 0, limit)
  for _, eid in ipairs(ids) do
    local ek = k_event(eid)
    if redis.call('EXISTS', ek) == 0 then
      redis.call('ZREM', k_due, eid)
    else
      redis.call('HINCRBY', ek, 'attempts', 1)
      redis.call('HSET', ek, 'claim', token)
      redis.call('ZADD', k_due, fmt(now + lease), eid)
      table.insert(out, eid)
      local values = redis.call('HMGET', ek, unpack(FIELDS))
      for i = 1, #FIELDS do table.insert(out, values[i] or '') end
    end
  end
  return out

elseif cmd == 'delivered' then
  -- ARGV: eid, HTTP status. The receiver answered 2xx: the event is gone, the job's
  -- next one is due. 1, or 0 if it was gone already (purged, erased, or delivered by
  -- another sender whose lease this one outlived).
  local eid = ARGV[2]
  if redis.call('EXISTS', k_event(eid)) == 0 then return 0 end
  remove(eid)
  redis.call('HINCRBY', k_stats, 'notify:delivered', 1)
  return 1

elseif cmd == 'attempt_failed' then
  -- ARGV: eid, token, delay_s, window_s, error, HTTP status ('' for none).
  -- Not delivered: due again after delay_s (at the latest at the window's end); once
  -- the window (window_s from due_since) is over, failed. Returns {'retrying', due},
  -- {'failed'}, {'superseded'} (another sender holds it) or {'missing'}.
  local eid, token = ARGV[2], ARGV[3]
  local ek = k_event(eid)
  local ev = redis.call('HMGET', ek, 'claim', 'due_since', 'job_id')
  if not ev[3] then return {'missing'} end
  if ev[1] ~= token then return {'superseded'} end
  redis.call('HINCRBY', k_stats, 'notify:attempts_failed', 1)
  redis.call('HSET', ek, 'last_error', ARGV[6], 'last_status', ARGV[7])
  redis.call('HDEL', ek, 'claim')
  local ends = tonumber(ev[2] or '') or now
  ends = ends + tonumber(ARGV[5])
  if now >= ends then
    redis.call('ZREM', k_due, eid)
    redis.call('ZREM', k_pending, eid)
    redis.call('ZADD', k_failed, fmt(now), eid)
    redis.call('HSET', ek, 'status', 'failed', 'failed_at', fmt(now))
    redis.call('HDEL', ek, 'next_at')
    redis.call('HINCRBY', k_stats, 'notify:failed', 1)
    return {'failed'}
  end
  local due = math.min(now + tonumber(ARGV[4]), ends)
  redis.call('ZADD', k_due, fmt(due), eid)
  redis.call('HSET', ek, 'next_at', fmt(due))
  return {'retrying', fmt(due)}

elseif cmd == 'release' then
  -- ARGV: eid, token, delay_s. Not sent (its receiver had every slot of this sender
  -- busy): due again after delay_s, the attempt not counted. 1, or 0 if not held.
  local eid, token = ARGV[2], ARGV[3]
  local ek = k_event(eid)
  if redis.call('HGET', ek, 'claim') ~= token then return 0 end
  redis.call('HDEL', ek, 'claim')
  redis.call('HINCRBY', ek, 'attempts', -1)
  redis.call('ZADD', k_due, fmt(now + tonumber(ARGV[4])), eid)
  return 1

elseif cmd == 'retry' then
  -- ARGV: eid... Failed events are sent again, with a new retry window; each is the
  -- first of its job's events (events behind it waited), so it is due at once.
  -- Returns how many were failed (and are now pending).
  local n = 0
  for i = 2, #ARGV do
    local eid = ARGV[i]
    local ek = k_event(eid)
    if redis.call('HGET', ek, 'status') == 'failed' then
      local ev = redis.call('HMGET', ek, 'job_id', 'created_at')
      redis.call('ZREM', k_failed, eid)
      redis.call('ZADD', k_pending, ev[2] or fmt(now), eid)
      redis.call('HSET', ek, 'attempts', 0, 'status', 'pending')
      redis.call('HDEL', ek, 'failed_at', 'claim')
      promote(ev[1])
      n = n + 1
    end
  end
  if n > 0 then redis.call('HINCRBY', k_stats, 'notify:retried', n) end
  return n

elseif cmd == 'purge' then
  -- ARGV: eid... Failed events are removed for good (the job's next event, if any,
  -- becomes due). Pending ones are left alone. Returns how many went.
  local n = 0
  for i = 2, #ARGV do
    if redis.call('HGET', k_event(ARGV[i]), 'status') == 'failed' then
      remove(ARGV[i])
      n = n + 1
    end
  end
  if n > 0 then redis.call('HINCRBY', k_stats, 'notify:purged', n) end
  return n

elseif cmd == 'expire_failed' then
  -- ARGV: cutoff (Redis time, epoch s), limit. Retention: failed events that failed
  -- before the cutoff are removed, oldest first, at most `limit`. Returns {eid, job_id,
  -- type, ...} of those removed.
  local out = {}
  local old = redis.call('ZRANGEBYSCORE', k_failed, '-inf', '(' .. ARGV[2], 'LIMIT', 0,
                         tonumber(ARGV[3]))
  for _, eid in ipairs(old) do
    local kind = redis.call('HGET', k_event(eid), 'type') or ''
    local job_id = remove(eid) or ''
    table.insert(out, eid)
    table.insert(out, job_id)
    table.insert(out, kind)
  end
  if #old > 0 then redis.call('HINCRBY', k_stats, 'notify:expired', #old) end
  return out

elseif cmd == 'forget' then
  -- ARGV: dry run ('1' | '0'), job id... An erasure (`dispatcher forget`): the
  -- undelivered events (pending or failed) of these jobs are removed; they hold no
  -- phone, but they name jobs whose data is gone. Returns how many (would) go.
  local dry, n = ARGV[2] == '1', 0
  for i = 3, #ARGV do
    local ids = redis.call('LRANGE', k_job(ARGV[i]), 0, -1)
    n = n + #ids
    if not dry then
      for _, eid in ipairs(ids) do
        redis.call('DEL', k_event(eid))
        redis.call('ZREM', k_due, eid)
        redis.call('ZREM', k_pending, eid)
        redis.call('ZREM', k_failed, eid)
      end
      redis.call('DEL', k_job(ARGV[i]))
    end
  end
  if n > 0 and not dry then redis.call('HINCRBY', k_stats, 'notify:forgotten', n) end
  return n

elseif cmd == 'counts' then
  -- Read-only: {now, pending, failed, due now, oldest pending's created_at or ''}.
  local oldest = redis.call('ZRANGE', k_pending, 0, 0, 'WITHSCORES')
  return {fmt(now), redis.call('ZCARD', k_pending), redis.call('ZCARD', k_failed),
          redis.call('ZCOUNT', k_due, '-inf', fmt(now)), oldest[2] or ''}
end

return redis.error_reply('outbox.lua: unknown command ' .. tostring(cmd))
