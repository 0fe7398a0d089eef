-- The job's life in Redis: every transition is one command of this script.
--
-- Called as  EVALSHA <sha> 2 <prefix> <queue> <command> <args...>
-- (dispatcher/store/execution.py wraps each command). Redis runs a script without
-- interleaving other commands, so every check-then-write below is atomic.
--
-- Time is Redis's own clock (TIME), never a host's: leases, pauses, rate-limit
-- slots and retry times mean the same on every host whatever its clock says.
--
-- Keys (P = the key prefix, Q = the Celery queue's name):
--   Q.{dialer}.{lane}     list    broker messages (kombu envelopes) of one dialer's lane
--                                 (realtime, bulk) of leads for an agent: LPUSH in, popped
--                                 on the right. An envelope's routing key names its list.
--   Q.list.{dialer}.{lane}  list  the same for leads for a list (add_lead): lanes of their
--                                 own, which the previous release never polls
--   Q                     list    messages of older versions (consumed after the default
--                                 dialer's realtime lane)
--   Q.wake                list    a token per push (at most 64 kept): wakes idle consumers
--   P:job:{id}            hash    the job as `dispatcher job` shows it: state (queued, running,
--                                 retrying, added, duplicate, dead), attempts, reason, error, http_status,
--                                 lead_id, list_id, campaign, agent_user, dialer, priority,
--                                 enqueued_at, updated_at,
--                                 next_attempt_at, duplicate_lead_ids, deleted_lead_ids,
--                                 unverified_lead_ids (leads of the phone only lead_search
--                                 sees: perhaps copies), reconcile (pending, found,
--                                 duplicates, unverified, verifying, verified),
--                                 waiting_for_dialer, dialer_wait_until (a job whose dialer
--                                 the worker that took it did not know),
--                                 phone_key (the job's P:phone:{h}, never the phone);
--                                 a list job's target (add_lead): target ("list"; none:
--                                 an agent job), target_list_id, campaign_id; a duplicate
--                                 (state duplicate): existing_lead_id, duplicate_check (the
--                                 check of VICIdial's that found it); a list lead added:
--                                 what add_lead reported of it (hopper, callback,
--                                 custom_fields, unfinished)
--   P:exec:{id}           hash    the execution record: state, seq, token, lease_until, worker,
--                                 orphaned_from, reason, lead_id, list_id, campaign, done_at,
--                                 dialer_wait_since (when a worker that did not know the
--                                 job's dialer first handed it back; cleared when one that
--                                 knows it claims it or defers it), existing_lead_id (state
--                                 duplicate), lock ("{server} {h}": the add_lead lock its
--                                 claim holds, released with the outcome)
--   P:idem:{key}          string  "{job_id} {fingerprint}" of the first job enqueued with the key
--   P:dl:{id}             string  one dead letter (JSON; the id is the job id)
--   P:dlq                 zset    every dead-letter id, by last failure time
--   P:dlq:reason:{r}      zset    the dead-letter ids of one reason
--   P:phone:{h}           hash    the phone index (dispatcher/store/phone_index.py): job id -> its
--                                 idempotency key ('' for none), and #letters (how many of
--                                 its jobs have a dead letter); h = 32 hex of HMAC-SHA256(the
--                                 index key, phone). TTL: the longest of its jobs' states'
--                                 plus a day (each write of a job's state extends it); none
--                                 while #letters > 0 (the letters it finds live as long)
--   P:dlq:phone_keys      hash    dead-letter id -> h, while the letter exists
--   P:dlq:index_cursor    string  how far the workers' maintenance has put the letters that
--                                 the previous release wrote (with no phone index) into the
--                                 index: the last-failure score below which letters are
--                                 still to be looked at, or `done`
--   P:index_key           string  the index's HMAC key (hex; made once, by the first enqueue
--                                 or operator tool that needs it)
--   P:scheduled           zset    envelopes waiting for their retry time (score: Redis time)
--   P:pause:{server}      hash    a fleet-wide pause of calls to one VICIdial server: until,
--                                 kind (refused|outage), reason, since, error, trips, probing;
--                                 server "{dialer}:list" pauses only that dialer's leads for
--                                 a list (add_lead refused a permission the agent API's calls
--                                 do not need)
--   P:pauses              set     the servers that have a pause hash (no read path scans keys)
--   P:breaker:{server}    string  consecutive network failures against the server
--   P:rate:{server}       string  GCRA theoretical arrival time of the fleet rate limit
--   P:addlock:{server}:{h}  string  the job id of the one add_lead call in flight for phone
--                                 key h (P:phone:{h}) on that dialer, fleet-wide: VICIdial's
--                                 duplicate check is check-then-insert without a lock. Taken
--                                 by `claim`, released with the outcome, expires with the
--                                 claim's lease
--   P:stats               hash    fleet counters (dispatcher/store/stats.py)
--   P:lookup:{server}     hash    what the last look-up or check of the server's Non-Agent API
--                                 found (reconciliation): state (ok, denied, refused,
--                                 unavailable), error, missing, fix, checked_at, hold_until;
--                                 TTL: LOOKUP_TTL_S, or its hold + a day if longer, set by
--                                 each command that writes it (never shortened)
--   P:lookups             set     the servers that have a lookup hash (TTL as theirs)
--   _dispatcher.inflight.Q.{id}   list   a consumer's in-flight list (broker.lua), named by
--                                 the caller of `poison`: the raw item leaves it together
--                                 with its letter's write
--   P:notify:event:{eid}  hash    one outcome notification (the outbox; dispatcher/store/
--                                 outbox.lua sends and settles it): job_id, type, state,
--                                 created_at, url, idempotency_key, dialer, lead_id,
--                                 list_id, campaign, existing_lead_id, reason, error,
--                                 attempts, due_since. No TTL while pending.
--   P:notify:job:{id}     list    the job's undelivered event ids, oldest first: only the
--                                 first is ever due (in order per job)
--   P:notify:due          zset    events that may be sent, by when (one per job at most)
--   P:notify:pending      zset    every undelivered, not failed event, by created_at
--   P:notify:failed       zset    (outbox.lua writes it) failed events, by when they failed
--
-- The execution record (P:exec:{id}) is a state machine; `seq` counts publications
-- of the job (a retry or a replay publishes it again with seq + 1), `token` names
-- the delivery that holds or last changed the record:
--
--   (none) or queued --claim--> claimed --succeed--> done       (final: never called again)
--                               claimed --duplicate--> duplicate (final, as done: add_lead's
--                                                      duplicate check found a lead)
--                               claimed --retry----> scheduled  (seq + 1, a new publication)
--                               claimed --defer----> scheduled  (same seq: paused, throttled)
--                               claimed --dead-----> dead       (seq + 1: old copies are stale)
--                               claimed, lease over --claim--> claimed by the new copy
--                                                              ("orphaned": it decides now)
--   dead --replay--> queued (seq + 1)
--   (none), queued or scheduled --await_dialer--> (unchanged; the same publication waits in
--                               `scheduled` for a worker that knows the job's dialer; after
--                               UNKNOWN_DIALER_WAIT_S the worker writes the letter: dead)
--   any but done and dead --forget--> forgotten (seq + 1: every copy is stale, never called)
--
-- Reconciliation (DISPATCHER_AMBIGUOUS=reconcile; the job message carries `reconcile`):
--
--   claimed --await_lookup--> scheduled (seq + 1: a look-up, after RECONCILE_AFTER_S)
--                             (the call's answer never came, or its copy vanished)
--   scheduled --claim--> claimed (the look-up) --reconciled--> done (the lead was found)
--                                              --retry-------> scheduled (not found:
--                                                              called again)
--                                              --dead--------> dead (cannot tell: ambiguous)
--                                              --await_lookup-> scheduled (look-up failed)
--   dead --reconcile--> scheduled (seq + 1: a look-up; `dispatcher dlq reconcile`)
--   done: verify_later schedules a verification look-up, `duplicates` records what it
--   finds; neither changes the state. `gate` and the lookup_* commands hold no job.
--
-- Outcome notifications: the outcome commands (succeed, reconciled, dead, duplicate) take
-- a notify tail of five arguments
-- (event id, receiver URL, idempotency key, dialer, the error as the event shows it:
-- redacted, phones and lead fields removed; dispatcher/store/outbox.py builds it) and,
-- when the outcome is recorded and the URL is not '', write the event into the outbox
-- in the same step (`notify` below): a crash between the outcome and the POST loses
-- nothing. A repeated command ('again') writes no second event. `lettered` on the
-- execution record says the job had a dead letter: its later success is
-- lead.replayed_added.
--
-- Compare-and-set: retry, defer and dead apply only while the caller's token holds
-- the claim (a copy that lost its claim is told "superseded"), and a repeated call
-- with the same token answers "again" (a reply lost on the way back, then resent).
-- succeed always applies: the lead was added, and that fact beats any other record;
-- it also retires a dead letter of the job that a copy wrote meanwhile.

local P, Q = KEYS[1], KEYS[2]
local cmd = ARGV[1]

redis.replicate_commands()  -- TIME before writes (Redis < 7); a no-op on 7
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

local function fmt(x) return string.format('%.6f', x) end
local function k_job(id) return P .. ':job:' .. id end
local function k_exec(id) return P .. ':exec:' .. id end
local function k_dl(id) return P .. ':dl:' .. id end
local function k_reason(r) return P .. ':dlq:reason:' .. r end
local k_dlq, k_scheduled, k_stats = P .. ':dlq', P .. ':scheduled', P .. ':stats'
local k_pauses = P .. ':pauses'
local function k_pause(s) return P .. ':pause:' .. s end

-- A record no copy of the job may act on again: added (done), or a list's lead that
-- VICIdial's duplicate check found (duplicate).
local function final(state) return state == 'done' or state == 'duplicate' end

-- The add_lead lock (at most one add_lead in flight per dialer and phone, fleet-wide):
-- the claim of a list job's call takes it and notes it on the execution record; the
-- outcome that ends the claim releases it, if the job still holds it.
local function k_lock(server, h) return P .. ':addlock:' .. server .. ':' .. h end
local function release_lock(id)
  local ek = k_exec(id)
  local held = redis.call('HGET', ek, 'lock')
  if not held then return end
  redis.call('HDEL', ek, 'lock')
  local server, h = string.match(held, '^(%S+) (%S+)$')
  if server then
    local lk = k_lock(server, h)
    if redis.call('GET', lk) == id then redis.call('DEL', lk) end
  end
end

-- The phone index (P:phone:{h}): it outlives the job states it lists by INDEX_MARGIN_S,
-- and has no TTL while one of its jobs has a dead letter.
local INDEX_MARGIN_S = 86400
local k_phone_keys = P .. ':dlq:phone_keys'
local function k_phone(h) return P .. ':phone:' .. h end

-- A job state written with `ttl`: its index entry lives at least that long (+ margin).
local function keep_index(h, ttl)
  local k = k_phone(h)
  local left = redis.call('TTL', k)
  if left >= 0 and left < ttl + 3600 then redis.call('EXPIRE', k, ttl + INDEX_MARGIN_S) end
end

-- A job made: listed under its phone, with its idempotency key.
local function index_job(h, id, idem, ttl)
  local k = k_phone(h)
  if redis.call('HSET', k, id, idem) == 1 and redis.call('HLEN', k) == 1 then
    redis.call('EXPIRE', k, ttl + INDEX_MARGIN_S)  -- a new index: its first job
  else
    keep_index(h, ttl)
  end
end

-- A dead letter written for a job of phone key h: the index keeps it while it exists.
local function index_letter(id, h)
  local k = k_phone(h)
  redis.call('HSET', k_phone_keys, id, h)
  redis.call('HSETNX', k, id, '')
  redis.call('HINCRBY', k, '#letters', 1)
  redis.call('PERSIST', k)
end

-- No letter of the index is left: it lives as long as its longest job state (plus the
-- margin) and forgets the jobs whose state is gone; with none left, it goes.
local function settle_index(h)
  local k = k_phone(h)
  local longest = 0
  for _, id in ipairs(redis.call('HKEYS', k)) do
    if string.sub(id, 1, 1) ~= '#' then
      local left = redis.call('TTL', k_job(id))
      if left == -2 then redis.call('HDEL', k, id) elseif left > longest then longest = left end
    end
  end
  if redis.call('HLEN', k) == 0 then
    redis.call('DEL', k)
  else
    redis.call('EXPIRE', k, longest + INDEX_MARGIN_S)
  end
end

-- Remove a dead letter and its index entries; its reason, or nil if there was none.
local function retire_letter(id)
  local rec = redis.call('GET', k_dl(id))
  if not rec then return nil end
  local ok, data = pcall(cjson.decode, rec)
  local reason = (ok and type(data) == 'table' and data.reason) or ''
  redis.call('DEL', k_dl(id))
  redis.call('ZREM', k_dlq, id)
  if reason ~= '' then redis.call('ZREM', k_reason(reason), id) end
  local h = redis.call('HGET', k_phone_keys, id)
  if h then
    redis.call('HDEL', k_phone_keys, id)
    if redis.call('HINCRBY', k_phone(h), '#letters', -1) <= 0 then
      redis.call('HDEL', k_phone(h), '#letters')
      settle_index(h)
    end
  end
  return reason
end

-- The outbox (see the header): the notify tail starts at ARGV[at]; `facts` holds the
-- event's lead_id, list_id, campaign, existing_lead_id and reason. An event waits
-- behind the job's earlier undelivered ones: only the first of P:notify:job:{id} is due.
local function notify(id, at, kind, state, facts)
  local eid, url = ARGV[at] or '', ARGV[at + 1] or ''
  if eid == '' or url == '' then return end
  local ek = P .. ':notify:event:' .. eid
  if redis.call('EXISTS', ek) == 1 then return end
  redis.call('HSET', ek, 'job_id', id, 'type', kind, 'state', state, 'created_at', fmt(now),
             'url', url, 'idempotency_key', ARGV[at + 2] or '', 'dialer', ARGV[at + 3] or '',
             'error', ARGV[at + 4] or '', 'lead_id', facts.lead_id or '',
             'list_id', facts.list_id or '', 'campaign', facts.campaign or '',
             'existing_lead_id', facts.existing_lead_id or '', 'reason', facts.reason or '',
             'attempts', 0)
  if redis.call('RPUSH', P .. ':notify:job:' .. id, eid) == 1 then
    redis.call('HSET', ek, 'due_since', fmt(now))
    redis.call('ZADD', P .. ':notify:due', fmt(now), eid)
  end
  redis.call('ZADD', P .. ':notify:pending', fmt(now), eid)
  redis.call('HINCRBY', k_stats, 'notify:created', 1)
end

-- The compare-and-set of retry and await_lookup: the delivery holding the claim with
-- `token` ends it, and publication seq + 1 (`envelope`) waits in `scheduled` for
-- delay_s. Returns nil and the due time when it applied, else the answer: {'done'}
-- (added meanwhile), {'again'} (this very call, repeated after a lost reply) or
-- {'superseded'} (the claim is not this delivery's any more).
local function reschedule(id, token, seq, envelope, delay_s, ttl)
  local ek = k_exec(id)
  local ex = redis.call('HMGET', ek, 'state', 'token', 'seq')
  if final(ex[1]) then return {'done'} end
  if ex[2] ~= token then return {'superseded'} end
  if ex[1] == 'scheduled' and tonumber(ex[3] or '0') == seq + 1 then return {'again'} end
  if ex[1] ~= 'claimed' then return {'superseded'} end
  release_lock(id)
  local due = now + tonumber(delay_s)
  redis.call('HSET', ek, 'state', 'scheduled', 'seq', seq + 1)
  redis.call('HDEL', ek, 'lease_until', 'orphaned_from')
  redis.call('EXPIRE', ek, ttl)
  redis.call('ZADD', k_scheduled, fmt(due), envelope)
  return nil, due
end

-- A slot of the server's fleet-wide rate limit (GCRA: P:rate:{server} holds the
-- theoretical arrival time), for a claim or a gated request. Returns the delay until
-- the slot reserved, or nil when none comes within maxwait (nothing reserved) and the
-- delay the next one is away.
local function rate_slot(server, interval, maxwait)
  if interval <= 0 then return 0 end
  local rk = P .. ':rate:' .. server
  local tat = tonumber(redis.call('GET', rk) or '0')
  if tat < now then tat = now end
  local delay = tat - now
  if delay > maxwait then return nil, delay end
  local nxt = tat + interval
  redis.call('SET', rk, fmt(nxt), 'PX', math.ceil((nxt - now) * 1000) + 1000)
  return delay
end

-- Replay and reconcile of a dead letter: hand the job back to the workers as
-- publication `seq` in `state` (queued or scheduled), removing the letter. Returns
-- nil when done, else the answer: {'missing'}, {'done', lead_id} (added after all:
-- the letter is removed), {'busy'} (a live claim) or {'conflict'} (a newer seq).
local function take_letter(id, seq, ttl, state)
  if redis.call('EXISTS', k_dl(id)) == 0 then return {'missing'} end
  local ek = k_exec(id)
  local ex = redis.call('HMGET', ek, 'state', 'seq', 'lease_until', 'lead_id')
  if final(ex[1]) then
    retire_letter(id)
    return {'done', ex[4] or ''}
  end
  if ex[1] == 'claimed' and tonumber(ex[3] or '0') > now then return {'busy'} end
  if tonumber(ex[2] or '0') > seq then return {'conflict'} end
  retire_letter(id)
  redis.call('HSET', ek, 'state', state, 'seq', seq, 'token', '', 'lettered', '1')
  redis.call('HDEL', ek, 'lease_until', 'orphaned_from', 'reason', 'dialer_wait_since')
  redis.call('EXPIRE', ek, ttl)
  return nil
end

-- VICIdial answered (HTTP 200, whatever it said): the network failures are not
-- consecutive any more, and an outage pause is over. 1 if a pause was ended.
local function answered(server)
  redis.call('DEL', P .. ':breaker:' .. server)
  if redis.call('HGET', k_pause(server), 'kind') == 'outage' then
    redis.call('DEL', k_pause(server))
    redis.call('SREM', k_pauses, server)
    return 1
  end
  return 0
end

-- A list a message may be pushed to: one of this queue's lanes, never another key.
local function lane_of(name)
  if name == Q or string.sub(name, 1, #Q + 1) == Q .. '.' then return name end
  return Q
end

local function wake(n)
  if n <= 0 then return end
  for _ = 1, math.min(n, 16) do redis.call('LPUSH', Q .. '.wake', '1') end
  redis.call('LTRIM', Q .. '.wake', 0, 63)
end

-- The list an envelope belongs to: its routing key (a lane of this queue).
local function routing_of(envelope)
  local ok, data = pcall(cjson.decode, envelope)
  if ok and type(data) == 'table' and type(data.properties) == 'table'
      and type(data.properties.delivery_info) == 'table'
      and type(data.properties.delivery_info.routing_key) == 'string' then
    return lane_of(data.properties.delivery_info.routing_key)
  end
  return Q
end

local function show(id, ttl, ...)
  redis.call('HSET', k_job(id), ...)
  redis.call('EXPIRE', k_job(id), ttl)
  local h = redis.call('HGET', k_job(id), 'phone_key')
  if h then keep_index(h, ttl) end
end

-- More fields of the job state, given as a JSON object of strings ('' for none).
local function show_more(id, ttl, text)
  if not text or text == '' then return end
  local ok, more = pcall(cjson.decode, text)
  if not ok or type(more) ~= 'table' then return end
  local fields = {}
  for k, v in pairs(more) do
    if type(k) == 'string' and type(v) == 'string' then
      table.insert(fields, k)
      table.insert(fields, v)
    end
  end
  if #fields > 0 then show(id, ttl, unpack(fields)) end
end

local function k_lookup(s) return P .. ':lookup:' .. s end
-- A look-up record nobody refreshed for a week is forgotten (the next look-up or
-- check starts afresh); one that holds look-ups back lives as long as its hold.
local LOOKUP_TTL_S = 7 * 86400
local function keep_lookup(server, hold_s)
  local ttl = math.max(LOOKUP_TTL_S, math.ceil(hold_s or 0) + 86400)
  for _, k in ipairs({k_lookup(server), P .. ':lookups'}) do
    if redis.call('TTL', k) < ttl then redis.call('EXPIRE', k, ttl) end
  end
end

-- A worker that knows the job's dialer took it (a claim, or a deferral of one that
-- found the dialer paused or busy): the wait for such a worker is over.
local function dialer_known(id)
  redis.call('HDEL', k_exec(id), 'dialer_wait_since')
  redis.call('HDEL', k_job(id), 'waiting_for_dialer', 'dialer_wait_until')
  if redis.call('HGET', k_job(id), 'reason') == 'unknown_dialer' then
    redis.call('HDEL', k_job(id), 'reason', 'error')
  end
end

-- Add the comma-separated lead ids of `csv` to the job hash's `field` (a comma list),
-- each once; how many were new.
local function merge_ids(id, ttl, field, csv)
  local have = redis.call('HGET', k_job(id), field) or ''
  local seen, list, n = {}, {}, 0
  for x in string.gmatch(have, '[^,]+') do seen[x] = true; table.insert(list, x) end
  for x in string.gmatch(csv, '[^,]+') do
    if not seen[x] then seen[x] = true; table.insert(list, x); n = n + 1 end
  end
  show(id, ttl, field, table.concat(list, ','))
  return n
end

if cmd == 'enqueue' then
  -- ARGV: ttl, strict, the phone index's key (hex; '' for none), then per job: job_id,
  -- envelope, agent_user, idempotency key ('' for none), fingerprint of the lead,
  -- enqueued_at, the lane list it goes to, its phone key ('' for none), more fields of
  -- its state (a JSON object of strings, '' for none: a list job's target).
  -- Per job: "n:{id}" new, "e:{id}" the key's first job (the same lead), "c:{id}" the key
  -- belongs to another lead. strict = 1: any conflict and nothing is written.
  -- {'rekey'} and nothing written: the index key given is not the one Redis holds.
  local ttl, strict, ikey = tonumber(ARGV[2]), ARGV[3], ARGV[4]
  if ikey ~= '' then
    local have = redis.call('GET', P .. ':index_key')
    if not have then
      redis.call('SET', P .. ':index_key', ikey)
    elseif have ~= ikey then
      return {'rekey'}
    end
  end
  local n = (#ARGV - 4) / 9
  -- The key's first job, as "e:{id}" (the same lead) or "c:{id}" (another lead).
  local function bound(b)
    local key = ARGV[b + 4]
    if key == '' then return nil end
    local v = redis.call('GET', P .. ':idem:' .. key)
    if not v then return nil end
    local sp = string.find(v, ' ', 1, true)
    local first = sp and string.sub(v, 1, sp - 1) or v
    local fp = sp and string.sub(v, sp + 1) or ''
    if fp ~= '' and fp ~= ARGV[b + 5] then return 'c:' .. first end
    return 'e:' .. first
  end
  local out = {}
  if strict == '1' then
    local conflicts = 0
    for i = 1, n do
      local seen = bound(4 + (i - 1) * 9)
      if seen and string.sub(seen, 1, 1) == 'c' then
        out[i] = seen
        conflicts = conflicts + 1
      end
    end
    if conflicts > 0 then
      for i = 1, n do out[i] = out[i] or '' end
      return out
    end
  end
  local added = 0
  for i = 1, n do
    local b = 4 + (i - 1) * 9
    local seen = bound(b)
    if seen then
      out[i] = seen
    else
      local id, key = ARGV[b + 1], ARGV[b + 4]
      if key ~= '' then
        redis.call('SET', P .. ':idem:' .. key, id .. ' ' .. ARGV[b + 5], 'EX', ttl)
      end
      -- A lane is Q.{dialer}.{priority}; neither part holds a dot.
      local dialer, priority = string.match(ARGV[b + 7], '%.([^.]+)%.([^.]+)$')
      local h = ARGV[b + 8]
      local fields = {'state', 'queued', 'attempts', 0, 'enqueued_at', ARGV[b + 6],
                      'updated_at', ARGV[b + 6], 'agent_user', ARGV[b + 3],
                      'dialer', dialer or '', 'priority', priority or ''}
      if h ~= '' then
        table.insert(fields, 'phone_key')
        table.insert(fields, h)
      end
      if ARGV[b + 9] ~= '' then
        local ok, more = pcall(cjson.decode, ARGV[b + 9])
        if ok and type(more) == 'table' then
          for k, v in pairs(more) do
            if type(k) == 'string' and type(v) == 'string' then
              table.insert(fields, k)
              table.insert(fields, v)
            end
          end
        end
      end
      redis.call('HSET', k_job(id), unpack(fields))
      redis.call('EXPIRE', k_job(id), ttl)
      if h ~= '' then index_job(h, id, key, ttl) end
      redis.call('LPUSH', lane_of(ARGV[b + 7]), ARGV[b + 2])
      added = added + 1
      out[i] = 'n:' .. id
    end
  end
  if added > 0 then redis.call('HINCRBY', k_stats, 'enqueued', added) end
  wake(added)
  return out

elseif cmd == 'claim' then
  -- ARGV: job_id, seq, token, lease_s, ttl, rate_interval_s (0: none), worker,
  --       max_rate_wait_s, server, scope (a list job's own pause: "{server}:list"; ''
  --       for none), lock (the phone key h of a list job's add_lead call: it takes
  --       P:addlock:{server}:{h} for the claim's lease; '' for none).
  -- Returns {verdict, detail[, extra]}:
  --   done {lead_id}       the job succeeded before: never call again
  --   duplicate {existing_lead_id}   add_lead's duplicate check ended the job: the same
  --   stale {seq}          an older publication of a job that has moved on: drop it
  --   busy {seconds}       another copy holds a live claim: look again when it ends
  --   orphaned {seconds}   the claim's holder vanished mid-call; this copy took it over
  --   locked {seconds}     another job's add_lead for this phone is in flight on this
  --                        dialer (its lock expires in that long): look again soon
  --   paused {seconds, reason}   calls to the server (or the scope) are paused for that long
  --   throttled {seconds}  no rate-limit slot within max_rate_wait_s
  --   ok {delay}           claimed: wait `delay` for the reserved rate-limit slot
  --   probe_refused, probe_outage {delay}   claimed, and this call is the one probe
  --                        after a pause (credentials first, or the call itself)
  --   probe_list {delay}   claimed, and this call is the one probe after the scope's
  --                        pause (add_lead's permissions first)
  local id, seq, token = ARGV[2], tonumber(ARGV[3]), ARGV[4]
  local lease, ttl, interval = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  local worker, maxwait, server = ARGV[8], tonumber(ARGV[9]), ARGV[10]
  local scope, h = ARGV[11] or '', ARGV[12] or ''
  local ek = k_exec(id)
  local ex = redis.call('HMGET', ek, 'state', 'seq', 'lease_until', 'lead_id', 'token',
                        'dialer_wait_since', 'existing_lead_id')
  local state, eseq = ex[1], tonumber(ex[2] or '0')
  local lk = h ~= '' and k_lock(server, h) or nil
  -- Another job's add_lead for the phone is in flight: {'locked', seconds}, else nil.
  local function locked()
    if not lk then return nil end
    local holder = redis.call('GET', lk)
    if holder and holder ~= id then
      return {'locked', fmt(math.max(redis.call('PTTL', lk), 0) / 1000)}
    end
    return nil
  end
  local function take_lock(seconds)
    if not lk then return end
    redis.call('SET', lk, id, 'PX', math.ceil(seconds * 1000))
    redis.call('HSET', ek, 'lock', server .. ' ' .. h)
  end
  if state == 'done' then return {'done', ex[4] or ''} end
  if state == 'duplicate' then return {'duplicate', ex[7] or ''} end
  if state == 'claimed' and eseq <= seq then
    if ex[5] == token then
      -- Our own claim: the reply to our first claim was lost and we asked again (or the
      -- claim fence refused our call, and we ask for a fresh lease).
      local other = locked()
      if other then return other end
      redis.call('HSET', ek, 'lease_until', fmt(now + lease))
      take_lock(lease)
      return {'ok', '0', 'own'}
    end
    local left = tonumber(ex[3] or '0') - now
    if left > 0 then return {'busy', fmt(left)} end
    redis.call('HSET', ek, 'token', token, 'lease_until', fmt(now + lease), 'worker', worker,
               'orphaned_from', ex[5] or '')
    redis.call('EXPIRE', ek, ttl)
    return {'orphaned', fmt(-left)}
  end
  if eseq > seq or state == 'dead' then return {'stale', tostring(eseq)} end
  local other = locked()
  if other then return other end
  -- The dialer's pause, and a list job's own (scope): either one running holds the job.
  local pauses = {}
  for _, s in ipairs({server, scope}) do
    if s ~= '' then
      local pause = redis.call('HMGET', k_pause(s), 'until', 'reason', 'kind')
      if pause[1] then
        if tonumber(pause[1]) > now then
          return {'paused', fmt(tonumber(pause[1]) - now), pause[2] or ''}
        end
        table.insert(pauses, {s, pause[3]})
      end
    end
  end
  local verdict = 'ok'
  for _, p in ipairs(pauses) do
    if verdict == 'ok' and (p[2] == 'refused' or p[2] == 'outage') then
      -- The cool-down is over: this copy alone probes (the dialer's pause first); the
      -- others see the pause extended by the probe's lease.
      redis.call('HSET', k_pause(p[1]), 'until', fmt(now + lease), 'probing', '1')
      verdict = p[1] == scope and 'probe_list' or 'probe_' .. p[2]
    end
  end
  local delay, away = rate_slot(server, interval, maxwait)
  if not delay then return {'throttled', fmt(away)} end
  redis.call('HSET', ek, 'state', 'claimed', 'seq', seq, 'token', token,
             'lease_until', fmt(now + delay + lease), 'worker', worker)
  redis.call('HDEL', ek, 'orphaned_from')
  take_lock(delay + lease)
  if ex[6] then dialer_known(id) end
  redis.call('EXPIRE', ek, ttl)
  show(id, ttl, 'state', 'running', 'updated_at', fmt(now))
  return {verdict, fmt(delay)}

elseif cmd == 'succeed' then
  -- ARGV: job_id, token, lead_id, list_id, campaign, done_ttl, job_ttl, attempts,
  --       latency bucket field, latency_ms, server, more fields of the job state (a JSON
  --       object of strings, '' for none: what add_lead reported of a list's lead), then
  --       the notify tail (5).
  -- A record `duplicate` gives way: the lead was added after all (a fact about VICIdial).
  -- Returns {'ok', retired letter's reason or '', outage pause ended 0/1},
  -- {'again', lead_id} for a repeated call, {'same', lead_id} when the job was
  -- recorded done with this very lead already (a look-up found it before this late
  -- answer was stored: one lead, reported twice), or {'duplicate', first lead_id}
  -- when another copy had added another lead (VICIdial now holds it twice).
  local id, token, lead_id = ARGV[2], ARGV[3], ARGV[4]
  local done_ttl, ttl, server = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[12]
  local ek = k_exec(id)
  local ex = redis.call('HMGET', ek, 'state', 'token', 'lead_id', 'lettered')
  if ex[1] == 'done' then
    if ex[2] == token then return {'again', ex[3] or ''} end
    if lead_id ~= '' and ex[3] == lead_id then
      answered(server)
      return {'same', lead_id}
    end
    local dups = redis.call('HGET', k_job(id), 'duplicate_lead_ids')
    if dups and dups ~= '' then dups = dups .. ',' .. lead_id else dups = lead_id end
    show(id, ttl, 'duplicate_lead_ids', dups)
    redis.call('HINCRBY', k_stats, 'duplicates_detected', 1)
    answered(server)
    return {'duplicate', ex[3] or ''}
  end
  release_lock(id)
  redis.call('HSET', ek, 'state', 'done', 'token', token, 'lead_id', lead_id,
             'list_id', ARGV[5], 'campaign', ARGV[6], 'done_at', fmt(now))
  redis.call('HDEL', ek, 'lease_until', 'orphaned_from', 'reason', 'existing_lead_id')
  redis.call('EXPIRE', ek, done_ttl)
  show(id, ttl, 'state', 'added', 'lead_id', lead_id, 'list_id', ARGV[5],
       'campaign', ARGV[6], 'updated_at', fmt(now), 'attempts', ARGV[9])
  redis.call('HDEL', k_job(id), 'next_attempt_at', 'reason', 'error', 'http_status',
             'existing_lead_id', 'duplicate_check')
  show_more(id, ttl, ARGV[13])
  redis.call('HINCRBY', k_stats, 'added', 1)
  redis.call('HINCRBY', k_stats, ARGV[10], 1)
  redis.call('HINCRBY', k_stats, 'latency_count', 1)
  redis.call('HINCRBYFLOAT', k_stats, 'latency_sum_ms', ARGV[11])
  local retired = retire_letter(id)
  if retired then redis.call('HINCRBY', k_stats, 'dead_letters_retired', 1) end
  notify(id, 14, (ex[4] or retired) and 'lead.replayed_added' or 'lead.added', 'added',
         {lead_id = lead_id, list_id = ARGV[5], campaign = ARGV[6]})
  return {'ok', retired or '', answered(server)}

elseif cmd == 'duplicate' then
  -- ARGV: job_id, token, existing lead_id ('' when the answer names none), its list_id
  --       ('' when not given), the duplicate check that answered, done_ttl, job_ttl,
  --       attempts, server, then the notify tail (5).
  -- add_lead's duplicate check found a lead of the phone and added nothing: the job
  -- ends in the final state duplicate (never called again, never replayed; a copy of it
  -- is acknowledged without a call, as for done). Compare-and-set on the claim, as
  -- dead: a copy that lost its claim writes nothing. A dead letter of the job a copy
  -- wrote meanwhile is retired. Returns {'ok', retired letter's reason or '', outage
  -- pause ended 0/1}, {'again', existing lead_id} (repeated), {'done', lead_id} (added
  -- by another copy) or {'superseded'}.
  local id, token = ARGV[2], ARGV[3]
  local done_ttl, ttl, server = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[10]
  local ek = k_exec(id)
  local ex = redis.call('HMGET', ek, 'state', 'token', 'lead_id', 'existing_lead_id')
  if ex[1] == 'done' then return {'done', ex[3] or ''} end
  if ex[2] ~= token then return {'superseded'} end
  if ex[1] == 'duplicate' then return {'again', ex[4] or ''} end
  if ex[1] ~= 'claimed' then return {'superseded'} end
  release_lock(id)
  redis.call('HSET', ek, 'state', 'duplicate', 'existing_lead_id', ARGV[4],
             'list_id', ARGV[5], 'done_at', fmt(now))
  redis.call('HDEL', ek, 'lease_until', 'orphaned_from', 'reason')
  redis.call('EXPIRE', ek, done_ttl)
  show(id, ttl, 'state', 'duplicate', 'existing_lead_id', ARGV[4], 'list_id', ARGV[5],
       'duplicate_check', ARGV[6], 'attempts', ARGV[9], 'updated_at', fmt(now))
  redis.call('HDEL', k_job(id), 'next_attempt_at', 'reason', 'error', 'http_status')
  redis.call('HINCRBY', k_stats, 'duplicate', 1)
  local retired = retire_letter(id)
  if retired then redis.call('HINCRBY', k_stats, 'dead_letters_retired', 1) end
  notify(id, 11, 'lead.duplicate', 'duplicate',
         {existing_lead_id = ARGV[4], list_id = ARGV[5]})
  return {'ok', retired or '', answered(server)}

elseif cmd == 'retry' then
  -- ARGV: job_id, token, seq, envelope (seq + 1), delay_s, ttl, attempts, reason, error,
  --       http_status ('' for none), server.
  local id, ttl, server = ARGV[2], tonumber(ARGV[7]), ARGV[12]
  local refused, due = reschedule(id, ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6], ttl)
  if refused then return refused end
  show(id, ttl, 'state', 'retrying', 'attempts', ARGV[8], 'reason', ARGV[9], 'error', ARGV[10],
       'http_status', ARGV[11], 'next_attempt_at', fmt(due), 'updated_at', fmt(now))
  redis.call('HINCRBY', k_stats, 'retries', 1)
  if ARGV[11] == '200' then answered(server) end
  return {'ok', fmt(due)}

elseif cmd == 'defer' then
  -- ARGV: job_id, token ('' when this copy holds no claim), seq, envelope (same seq),
  --       delay_s, ttl. Puts this publication back for later; no attempt is used.
  -- Releases the claim only if this copy holds it: never one another copy took.
  local id, token, seq = ARGV[2], ARGV[3], tonumber(ARGV[4])
  local ttl = tonumber(ARGV[7])
  local ek = k_exec(id)
  local ex = redis.call('HMGET', ek, 'state', 'token', 'seq', 'dialer_wait_since')
  if final(ex[1]) then return {'done'} end
  if tonumber(ex[3] or '0') > seq or ex[1] == 'dead' then return {'stale'} end
  if ex[4] then dialer_known(id) end
  local due = now + tonumber(ARGV[6])
  redis.call('ZADD', k_scheduled, fmt(due), ARGV[5])
  local mine = token ~= '' and ex[1] == 'claimed' and ex[2] == token
  if mine then
    release_lock(id)
    redis.call('HSET', ek, 'state', 'scheduled')
    redis.call('HDEL', ek, 'lease_until')
  end
  if mine or ex[1] ~= 'claimed' then
    show(id, ttl, 'state', 'retrying', 'next_attempt_at', fmt(due), 'updated_at', fmt(now))
  end
  return {'ok', fmt(due)}

elseif cmd == 'await_dialer' then
  -- ARGV: job_id, seq, envelope (the same publication, to a lane of the worker that
  --       took it), delay_s, wait_s, dialer, error, ttl.
  -- A worker took a job whose dialer it does not know: nothing is claimed or called;
  -- the publication waits in `scheduled` for a worker that knows the dialer (at most
  -- until the wait ends), counted from the first such hand-back (Redis time).
  -- Returns {'waiting', due, wait_until}, {'expired', since} (the wait is over: the
  -- caller writes the unknown_dialer letter with `dead`), {'done', lead_id} or
  -- {'stale'}. A live claim of another copy (a worker that knows the dialer) is left
  -- alone: the publication waits all the same, the job's state is not touched.
  local id, seq, wait = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[6])
  local ttl = tonumber(ARGV[9])
  local ek = k_exec(id)
  local ex = redis.call('HMGET', ek, 'state', 'seq', 'lease_until', 'lead_id',
                        'dialer_wait_since')
  if final(ex[1]) then return {'done', ex[4] or ''} end
  if tonumber(ex[2] or '0') > seq or ex[1] == 'dead' then return {'stale'} end
  local held = ex[1] == 'claimed' and tonumber(ex[3] or '0') > now
  local since = tonumber(ex[5] or '') or now
  if not held and now - since >= wait then return {'expired', fmt(since)} end
  local due = math.min(now + tonumber(ARGV[5]), since + wait)
  redis.call('ZADD', k_scheduled, fmt(due), ARGV[4])
  if not held then
    if not ex[5] then redis.call('HSET', ek, 'dialer_wait_since', fmt(since)) end
    redis.call('EXPIRE', ek, ttl)
    show(id, ttl, 'state', 'retrying', 'reason', 'unknown_dialer', 'error', ARGV[8],
         'waiting_for_dialer', ARGV[7], 'dialer_wait_until', fmt(since + wait),
         'next_attempt_at', fmt(due), 'updated_at', fmt(now))
  end
  return {'waiting', fmt(due), fmt(since + wait)}

elseif cmd == 'dead' then
  -- ARGV: job_id, token ('' for a letter written without a claim), seq, record JSON,
  --       score, reason, attempts, error, http_status ('' for none), ttl, server, then
  --       the notify tail (5).
  -- Returns {'ok'}, {'again'}, {'done', lead_id} (added after all: no letter),
  -- {'superseded'} (another copy holds or decided the job), {'busy'}, {'stale'}.
  local id, token, seq = ARGV[2], ARGV[3], tonumber(ARGV[4])
  local reason, ttl, server = ARGV[7], tonumber(ARGV[11]), ARGV[12]
  local ek = k_exec(id)
  local ex = redis.call('HMGET', ek, 'state', 'token', 'seq', 'lease_until', 'lead_id')
  if final(ex[1]) then return {'done', ex[5] or ''} end
  if token ~= '' then
    if ex[2] ~= token then return {'superseded'} end
    if ex[1] == 'dead' then return {'again'} end
    if ex[1] ~= 'claimed' then return {'superseded'} end
  else
    if ex[1] == 'claimed' and tonumber(ex[4] or '0') > now then return {'busy'} end
    if tonumber(ex[3] or '0') > seq and ex[1] ~= 'dead' then return {'stale'} end
  end
  if token ~= '' then release_lock(id) end
  local old = retire_letter(id)
  redis.call('SET', k_dl(id), ARGV[5])
  redis.call('ZADD', k_dlq, ARGV[6], id)
  redis.call('ZADD', k_reason(reason), ARGV[6], id)
  redis.call('HSET', ek, 'state', 'dead', 'seq', math.max(seq + 1, tonumber(ex[3] or '0')),
             'token', token, 'reason', reason, 'lettered', '1')
  redis.call('HDEL', ek, 'lease_until', 'orphaned_from', 'dialer_wait_since')
  redis.call('EXPIRE', ek, ttl)
  show(id, ttl, 'state', 'dead', 'reason', reason, 'attempts', ARGV[8], 'error', ARGV[9],
       'updated_at', fmt(now), 'http_status', ARGV[10])
  redis.call('HDEL', k_job(id), 'next_attempt_at')
  local h = redis.call('HGET', k_job(id), 'phone_key')
  if h then index_letter(id, h) end
  if not old then redis.call('HINCRBY', k_stats, 'dead_lettered:' .. reason, 1) end
  if ARGV[10] == '200' then answered(server) end
  -- A letter written again for a job already dead (a resent command) is no new outcome.
  if ex[1] ~= 'dead' then notify(id, 13, 'lead.dead_lettered', 'dead', {reason = reason}) end
  return {'ok'}

elseif cmd == 'poison' then
  -- ARGV: id, record JSON, score, ttl, in-flight list ('' for none), raw item.
  -- An invalid_payload letter. The id must be new: a message that merely claims a
  -- real job's id never touches that job ({'taken'}: the caller picks a fresh id).
  -- The raw item leaves its in-flight list only together with the letter's write.
  local id, ttl = ARGV[2], tonumber(ARGV[5])
  if redis.call('EXISTS', k_job(id), k_exec(id), k_dl(id)) > 0 then return {'taken'} end
  redis.call('SET', k_dl(id), ARGV[3])
  redis.call('ZADD', k_dlq, ARGV[4], id)
  redis.call('ZADD', k_reason('invalid_payload'), ARGV[4], id)
  show(id, ttl, 'state', 'dead', 'reason', 'invalid_payload', 'attempts', 0,
       'updated_at', fmt(now))
  redis.call('HINCRBY', k_stats, 'dead_lettered:invalid_payload', 1)
  if ARGV[6] ~= '' then redis.call('LREM', ARGV[6], 1, ARGV[7]) end
  return {'ok'}

elseif cmd == 'replay' then
  -- ARGV: id, envelope, seq of the new publication, ttl, lane list.
  -- Returns {'replayed'}, {'missing'} (no such letter), {'done', lead_id} (the lead
  -- was added after all: the letter is removed, nothing sent), {'busy'} (a copy of
  -- the job holds a live claim right now), {'conflict'} (a newer publication exists).
  local id, seq, ttl = ARGV[2], tonumber(ARGV[4]), tonumber(ARGV[5])
  local refused = take_letter(id, seq, ttl, 'queued')
  if refused then return refused end
  show(id, ttl, 'state', 'queued', 'attempts', 0, 'updated_at', fmt(now))
  redis.call('HDEL', k_job(id), 'reason', 'error', 'http_status', 'next_attempt_at')
  redis.call('LPUSH', lane_of(ARGV[6]), ARGV[3])
  redis.call('HINCRBY', k_stats, 'replayed', 1)
  wake(1)
  return {'replayed'}

elseif cmd == 'purge' then
  -- ARGV: id. Deletes one dead letter for good (the execution record stays `dead`,
  -- so a stale copy of the job still finds it dead). 1 if it existed.
  local reason = retire_letter(ARGV[2])
  if not reason then return 0 end
  redis.call('HINCRBY', k_stats, 'purged', 1)
  return 1

elseif cmd == 'index_letters' then
  -- ARGV: cursor ('' to leave it), then per letter: its id, phone key h, idempotency key
  -- ('' for none). Dead letters that are not in the phone index (written by the
  -- previous release, or by one of its workers still running during a rolling restart,
  -- or for a job it enqueued, whose state carries no phone_key) join it as `dead` would
  -- have indexed them; a letter indexed already, or gone, is left alone (running it
  -- twice changes nothing). The cursor (P:dlq:index_cursor) only moves down, to `done`
  -- at the end, and stays `done`. Returns how many letters joined the index.
  local cursor = ARGV[2]
  if cursor ~= '' then
    local k_cursor = P .. ':dlq:index_cursor'
    local was = redis.call('GET', k_cursor)
    if was ~= 'done' and (cursor == 'done' or not was or tonumber(cursor) < tonumber(was)) then
      redis.call('SET', k_cursor, cursor)
    end
  end
  local n = 0
  for i = 3, #ARGV, 3 do
    local id, h, idem = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    if redis.call('EXISTS', k_dl(id)) == 1 and redis.call('HEXISTS', k_phone_keys, id) == 0 then
      index_letter(id, h)
      if idem ~= '' then redis.call('HSET', k_phone(h), id, idem) end
      if redis.call('EXISTS', k_job(id)) == 1 and not redis.call('HGET', k_job(id), 'phone_key') then
        redis.call('HSET', k_job(id), 'phone_key', h)
      end
      n = n + 1
    end
  end
  return n

elseif cmd == 'expire_letters' then
  -- ARGV: cutoff (epoch s), limit. Retention (DISPATCHER_DEAD_LETTER_RETENTION_DAYS): the
  -- oldest dead letters whose last failure is before the cutoff are removed, at most
  -- `limit` of them, as purge removes one (the execution record stays dead). Returns
  -- {id, reason, ...} of the letters removed.
  local out = {}
  local old = redis.call('ZRANGEBYSCORE', k_dlq, '-inf', '(' .. ARGV[2], 'LIMIT', 0,
                         tonumber(ARGV[3]))
  for _, id in ipairs(old) do
    local reason = retire_letter(id)
    if reason == nil then
      redis.call('ZREM', k_dlq, id)  -- an index entry without its record
      reason = ''
    end
    table.insert(out, id)
    table.insert(out, reason)
  end
  if #old > 0 then redis.call('HINCRBY', k_stats, 'dead_letters_expired', #old) end
  return out

elseif cmd == 'forget' then
  -- ARGV: phone key h ('' for none), dry run ('1' | '0'), ttl of a stopped job's execution
  -- record, then (job id, idempotency key) pairs found otherwise (`--scan`: jobs of the
  -- previous release, which are not in the index).
  -- Erases what the dispatcher keeps of every job listed under P:phone:{h} (an erasure
  -- request, `dispatcher forget`): the job's state (P:job), its dead letter (and index
  -- entries), its idempotency record (if it still names the job), then the index itself.
  -- A job not yet final is stopped: its execution record becomes `forgotten` with seq + 1,
  -- so every copy still queued or scheduled is stale and is dropped unread by the worker
  -- that takes it; a copy calling VICIdial right now (in_flight) may still add the lead
  -- (its success is recorded without the phone) but can write nothing else. Execution
  -- records of final jobs stay (no lead field in them; they keep a stale copy from ever
  -- calling again). Dry run: the same counts, nothing changed. Returns
  -- {kind, count, ...}: job_states, dead_letters, idempotency_records, stopped, in_flight.
  local h, dry, ttl = ARGV[2], ARGV[3] == '1', tonumber(ARGV[4])
  local k = k_phone(h)
  local n = {job_states = 0, dead_letters = 0, idempotency_records = 0, stopped = 0,
             in_flight = 0}
  local fields = h ~= '' and redis.call('HGETALL', k) or {}
  for i = 5, #ARGV, 2 do
    table.insert(fields, ARGV[i])
    table.insert(fields, ARGV[i + 1])
  end
  local seen = {}
  for i = 1, #fields, 2 do
    local id, idem = fields[i], fields[i + 1]
    if string.sub(id, 1, 1) ~= '#' and not seen[id] then
      seen[id] = true
      local ek = k_exec(id)
      local ex = redis.call('HMGET', ek, 'state', 'seq', 'lease_until')
      local shown = redis.call('HGET', k_job(id), 'state')
      local ended = final(ex[1]) or ex[1] == 'dead' or ex[1] == 'forgotten'
          or (not ex[1] and (shown == 'added' or shown == 'duplicate' or shown == 'dead'
                             or not shown))
      if not ended then
        n.stopped = n.stopped + 1
        if ex[1] == 'claimed' and tonumber(ex[3] or '0') > now then
          n.in_flight = n.in_flight + 1
        end
        if not dry then
          redis.call('HSET', ek, 'state', 'forgotten', 'seq', tonumber(ex[2] or '0') + 1,
                     'token', '')
          redis.call('HDEL', ek, 'lease_until', 'orphaned_from')
          redis.call('EXPIRE', ek, ttl)
        end
      end
      if shown then
        n.job_states = n.job_states + 1
        if not dry then redis.call('DEL', k_job(id)) end
      end
      if redis.call('EXISTS', k_dl(id)) == 1 then
        n.dead_letters = n.dead_letters + 1
        if not dry then retire_letter(id) end
      end
      if idem ~= '' then
        local v = redis.call('GET', P .. ':idem:' .. idem)
        if v and string.sub(v, 1, #id + 1) == id .. ' ' then
          n.idempotency_records = n.idempotency_records + 1
          if not dry then redis.call('DEL', P .. ':idem:' .. idem) end
        end
      end
    end
  end
  if not dry then
    if h ~= '' then redis.call('DEL', k) end
    redis.call('HINCRBY', k_stats, 'forgotten:phones', 1)
    redis.call('HINCRBY', k_stats, 'forgotten:jobs', n.job_states)
  end
  return {'job_states', n.job_states, 'dead_letters', n.dead_letters,
          'idempotency_records', n.idempotency_records, 'stopped', n.stopped,
          'in_flight', n.in_flight}

elseif cmd == 'move_due' then
  -- ARGV: limit. Moves retries whose time has come onto their lanes; how many.
  local due = redis.call('ZRANGEBYSCORE', k_scheduled, '-inf', fmt(now), 'LIMIT', 0,
                         tonumber(ARGV[2]))
  for _, m in ipairs(due) do
    redis.call('LPUSH', routing_of(m), m)
    redis.call('ZREM', k_scheduled, m)
  end
  wake(#due)
  return #due

elseif cmd == 'network_failure' then
  -- ARGV: server, threshold, base pause s, max pause s. One more consecutive network
  -- failure; at the threshold the server's calls pause (doubling while the outage lasts:
  -- a failed probe trips it again at once). Returns {failures, seconds paused or '', tripped}.
  local server = ARGV[2]
  local bk, pk = P .. ':breaker:' .. server, k_pause(server)
  local n = redis.call('INCR', bk)
  redis.call('EXPIRE', bk, 3600)
  if n < tonumber(ARGV[3]) then return {n, '', 0} end
  local p = redis.call('HMGET', pk, 'until', 'kind', 'trips', 'probing')
  if p[2] == 'refused' then return {n, fmt(math.max(0, tonumber(p[1] or '0') - now)), 0} end
  if p[1] and tonumber(p[1]) > now and p[4] ~= '1' then
    return {n, fmt(tonumber(p[1]) - now), 0}
  end
  local trips = tonumber(p[3] or '0') + 1
  local d = math.min(tonumber(ARGV[4]) * 2 ^ (trips - 1), tonumber(ARGV[5]))
  redis.call('HSET', pk, 'until', fmt(now + d), 'kind', 'outage', 'reason', 'network',
             'trips', trips, 'since', fmt(now), 'probing', '0')
  redis.call('EXPIRE', pk, math.ceil(d) + 3600)
  redis.call('SADD', k_pauses, server)
  return {n, fmt(d), 1}

elseif cmd == 'pause' then
  -- ARGV: server, seconds, reason, error. The server refused our credentials (or
  -- the API is off): every call to it waits, fleet-wide.
  local server, d = ARGV[2], tonumber(ARGV[3])
  redis.call('HSET', k_pause(server), 'until', fmt(now + d), 'kind', 'refused',
             'reason', ARGV[4], 'since', fmt(now), 'error', ARGV[5], 'probing', '0')
  redis.call('EXPIRE', k_pause(server), math.ceil(d) + 3600)
  redis.call('SADD', k_pauses, server)
  return fmt(now + d)

elseif cmd == 'extend_pause' then
  -- ARGV: server, seconds. The probe could not reach the server: keep the pause.
  local pk = k_pause(ARGV[2])
  if redis.call('EXISTS', pk) == 0 then return 0 end
  redis.call('HSET', pk, 'until', fmt(now + tonumber(ARGV[3])), 'probing', '0')
  return 1

elseif cmd == 'resume' then
  -- ARGV: server. The credentials probe passed: calls resume.
  redis.call('DEL', k_pause(ARGV[2]))
  redis.call('SREM', k_pauses, ARGV[2])
  return 1

elseif cmd == 'pauses' then
  -- Read-only: {now, then server, until, reason, kind, since per pause}. Forgets
  -- servers whose pause hash expired. A fixed cost whatever the keyspace holds.
  local out = {fmt(now)}
  for _, server in ipairs(redis.call('SMEMBERS', k_pauses)) do
    local p = redis.call('HMGET', k_pause(server), 'until', 'reason', 'kind', 'since')
    if p[1] then
      table.insert(out, server)
      for j = 1, 4 do table.insert(out, p[j] or '') end
    else
      redis.call('SREM', k_pauses, server)
    end
  end
  return out

-- Reconciliation (dispatcher/vicidial/findings.py, workers/reconciler.py) ------------------------

elseif cmd == 'await_lookup' then
  -- ARGV: job_id, token, seq, envelope (seq + 1, a look-up), delay_s, ttl, attempts,
  --       error, http_status ('' for none), server.
  -- The call may have added the lead (its answer never came, or the copy that made it
  -- vanished): this publication ends, and the look-up of the job in VICIdial waits in
  -- `scheduled` for delay_s. The job shows `retrying`, reason ambiguous, reconcile
  -- pending. Compare-and-set as retry: {'ok', due}, {'again'}, {'done'}, {'superseded'}.
  local id, ttl, server = ARGV[2], tonumber(ARGV[7]), ARGV[11]
  local refused, due = reschedule(id, ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6], ttl)
  if refused then return refused end
  show(id, ttl, 'state', 'retrying', 'attempts', ARGV[8], 'reason', 'ambiguous',
       'error', ARGV[9], 'http_status', ARGV[10], 'next_attempt_at', fmt(due),
       'updated_at', fmt(now), 'reconcile', 'pending')
  redis.call('HINCRBY', k_stats, 'reconcile:scheduled', 1)
  if ARGV[10] == '200' then answered(server) end
  return {'ok', fmt(due)}

elseif cmd == 'reconciled' then
  -- ARGV: job_id, token, lead_id, list_id, duplicate lead ids ('' or "a,b"), done_ttl,
  --       job_ttl, attempts, server, then the notify tail (5).
  -- A look-up found the job's lead in VICIdial: done with that lead_id (the oldest of
  -- its copies; the others are recorded as duplicates). Like succeed, a fact about
  -- VICIdial: it applies whoever holds the claim, unless the job is done already.
  -- Returns {'ok', retired letter's reason or '', outage pause ended 0/1},
  -- {'again', lead_id} (repeated) or {'done', lead_id} (added before, by another copy).
  local id, token, lead_id, dups = ARGV[2], ARGV[3], ARGV[4], ARGV[6]
  local done_ttl, ttl, server = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[10]
  local ek = k_exec(id)
  local ex = redis.call('HMGET', ek, 'state', 'token', 'lead_id', 'lettered')
  if ex[1] == 'done' then
    if ex[2] == token then return {'again', ex[3] or ''} end
    return {'done', ex[3] or ''}
  end
  release_lock(id)
  redis.call('HSET', ek, 'state', 'done', 'token', token, 'lead_id', lead_id,
             'list_id', ARGV[5], 'campaign', '', 'done_at', fmt(now))
  redis.call('HDEL', ek, 'lease_until', 'orphaned_from', 'reason', 'existing_lead_id')
  redis.call('EXPIRE', ek, done_ttl)
  show(id, ttl, 'state', 'added', 'lead_id', lead_id, 'list_id', ARGV[5],
       'updated_at', fmt(now), 'attempts', ARGV[9],
       'reconcile', dups ~= '' and 'duplicates' or 'found')
  redis.call('HDEL', k_job(id), 'next_attempt_at', 'reason', 'error', 'http_status',
             'existing_lead_id', 'duplicate_check')
  if dups ~= '' then
    local n = merge_ids(id, ttl, 'duplicate_lead_ids', dups)
    redis.call('HINCRBY', k_stats, 'duplicates_detected', n)
  end
  redis.call('HINCRBY', k_stats, 'added', 1)
  redis.call('HINCRBY', k_stats, 'reconcile:found', 1)
  local retired = retire_letter(id)
  if retired then redis.call('HINCRBY', k_stats, 'dead_letters_retired', 1) end
  notify(id, 11, (ex[4] or retired) and 'lead.replayed_added' or 'lead.added', 'added',
         {lead_id = lead_id, list_id = ARGV[5]})
  return {'ok', retired or '', answered(server)}

elseif cmd == 'duplicates' then
  -- ARGV: job_id, lead ids ('' or "a,b"), deleted lead ids ('' or "a,b"), ttl,
  --       unverified lead ids ('' or "a,b").
  -- A later look-up of an added job (the verification after it was called again, or
  -- the repair) found copies besides its lead: they are recorded on the job
  -- (duplicate_lead_ids; deleted_lead_ids for copies deleted; unverified_lead_ids for
  -- leads of the phone that only lead_search sees, which may be copies). Returns how
  -- many duplicate ids were new. With no ids at all, the job shows the verification
  -- passed.
  local id, ttl = ARGV[2], tonumber(ARGV[5])
  local unverified = ARGV[6] or ''
  local n = 0
  local dups = redis.call('HGET', k_job(id), 'duplicate_lead_ids')
  if ARGV[3] ~= '' then
    n = merge_ids(id, ttl, 'duplicate_lead_ids', ARGV[3])
    show(id, ttl, 'reconcile', 'duplicates')
  elseif unverified ~= '' then
    if not dups then show(id, ttl, 'reconcile', 'unverified') end
  elseif not dups and not redis.call('HGET', k_job(id), 'unverified_lead_ids') then
    show(id, ttl, 'reconcile', 'verified')
  end
  if unverified ~= '' then merge_ids(id, ttl, 'unverified_lead_ids', unverified) end
  if ARGV[4] ~= '' then merge_ids(id, ttl, 'deleted_lead_ids', ARGV[4]) end
  if n > 0 then redis.call('HINCRBY', k_stats, 'duplicates_detected', n) end
  return n

elseif cmd == 'verify_later' then
  -- ARGV: job_id, lead_id, envelope, delay_s, ttl.
  -- Schedules a verification look-up of a job done with lead_id after a look-up had
  -- found nothing and the job was called again: a request stuck in VICIdial may still
  -- insert the first copy. Only while the record is done with that lead_id:
  -- {'ok', due} or {'changed'}.
  local id, ttl = ARGV[2], tonumber(ARGV[6])
  local ex = redis.call('HMGET', k_exec(id), 'state', 'lead_id')
  if ex[1] ~= 'done' or ex[2] ~= ARGV[3] then return {'changed'} end
  local due = now + tonumber(ARGV[5])
  redis.call('ZADD', k_scheduled, fmt(due), ARGV[4])
  show(id, ttl, 'reconcile', 'verifying')
  return {'ok', fmt(due)}

elseif cmd == 'reconcile' then
  -- ARGV: id, envelope (a look-up, seq + 1), seq of that publication, ttl, delay_s.
  -- An operator hands a dead letter to the workers to be looked up (`dispatcher dlq
  -- reconcile`): the letter is removed and the look-up scheduled in one step. Answers
  -- as replay: {'reconciling', due}, {'missing'}, {'done', lead_id} (added after all:
  -- the letter is removed), {'busy'}, {'conflict'}.
  local id, seq, ttl = ARGV[2], tonumber(ARGV[4]), tonumber(ARGV[5])
  local refused = take_letter(id, seq, ttl, 'scheduled')
  if refused then return refused end
  local due = now + tonumber(ARGV[6])
  redis.call('ZADD', k_scheduled, fmt(due), ARGV[3])
  show(id, ttl, 'state', 'retrying', 'reason', 'ambiguous', 'next_attempt_at', fmt(due),
       'updated_at', fmt(now), 'reconcile', 'pending')
  redis.call('HINCRBY', k_stats, 'reconcile:requested', 1)
  return {'reconciling', fmt(due)}

elseif cmd == 'gate' then
  -- ARGV: server, rate_interval_s (0: none), max_rate_wait_s.
  -- A request to VICIdial that is not a job's call (a verification look-up of a job
  -- that is done, a dry-run look-up, a duplicate's deletion) obeys the server's pause
  -- and takes a slot of its rate limit, as a claim does, but never probes: once a
  -- refused-credentials pause is over it waits for a call's probe; an outage pause
  -- that is over lets it go. Returns {'paused', seconds, reason}, {'throttled',
  -- seconds} or {'ok', delay}.
  local server, interval, maxwait = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
  local pause = redis.call('HMGET', k_pause(server), 'until', 'reason', 'kind')
  if pause[1] then
    local left = tonumber(pause[1]) - now
    if left > 0 then return {'paused', fmt(left), pause[2] or ''} end
    if pause[3] == 'refused' then return {'paused', fmt(5), pause[2] or ''} end
  end
  local delay, away = rate_slot(server, interval, maxwait)
  if not delay then return {'throttled', fmt(away)} end
  return {'ok', fmt(delay)}

elseif cmd == 'lookup_gate' then
  -- ARGV: server, mode (lookup | check | force), lease_s, fresh_s.
  -- Whether to call the server's Non-Agent API now. P:lookup:{server} holds what the
  -- last look-up or check found. After a refused login or a denied permission, only one
  -- caller at a time and only once the hold is over tries again (a refused login counts
  -- toward VICIdial's lock). lookup: {'go', state} or {'held', state, error, missing,
  -- fix}; check: also {'fresh'} (a result younger than fresh_s: look-ups keep it up to
  -- date) and {'held', ...} while another check runs; force: always {'go', state}.
  local server, mode = ARGV[2], ARGV[3]
  local k = k_lookup(server)
  local r = redis.call('HMGET', k, 'state', 'hold_until', 'checked_at', 'error', 'missing', 'fix')
  local state, hold = r[1] or '', tonumber(r[2] or '0')
  local blocked = state == 'denied' or state == 'refused'
  if mode ~= 'force' and hold > now and (blocked or mode == 'check') then
    return {'held', state, r[4] or '', r[5] or '', r[6] or ''}
  end
  if mode == 'check' and state ~= '' and tonumber(r[3] or '0') + tonumber(ARGV[5]) > now then
    return {'fresh'}
  end
  if mode ~= 'lookup' or blocked then
    redis.call('HSET', k, 'hold_until', fmt(now + tonumber(ARGV[4])))
    redis.call('SADD', P .. ':lookups', server)
    keep_lookup(server, tonumber(ARGV[4]))
  end
  return {'go', state}

elseif cmd == 'lookup_record' then
  -- ARGV: server, state (ok | denied | refused | unavailable), error, missing, fix,
  --       hold_s. What a look-up or check of the server's Non-Agent API found; no
  -- automatic look-up before hold_s passes (denied, refused). Returns the state before.
  local server = ARGV[2]
  local k = k_lookup(server)
  local prev = redis.call('HGET', k, 'state') or ''
  redis.call('HSET', k, 'state', ARGV[3], 'error', ARGV[4], 'missing', ARGV[5], 'fix', ARGV[6],
             'checked_at', fmt(now), 'hold_until', fmt(now + tonumber(ARGV[7])))
  redis.call('SADD', P .. ':lookups', server)
  keep_lookup(server, tonumber(ARGV[7]))
  return prev

elseif cmd == 'lookup_release' then
  -- ARGV: server. An operator says the cause is fixed: the next look-up tries again.
  local k = k_lookup(ARGV[2])
  if redis.call('EXISTS', k) == 0 then return 0 end
  redis.call('HSET', k, 'hold_until', '0')
  return 1

elseif cmd == 'lookups' then
  -- Read-only: {now, then server, state, checked_at, error, missing, fix per server}.
  local out = {fmt(now)}
  for _, server in ipairs(redis.call('SMEMBERS', P .. ':lookups')) do
    local r = redis.call('HMGET', k_lookup(server), 'state', 'checked_at', 'error', 'missing',
                         'fix')
    if r[1] then
      table.insert(out, server)
      for j = 1, 5 do table.insert(out, r[j] or '') end
    end
  end
  return out
end

return redis.error_reply('execution.lua: unknown command ' .. tostring(cmd))
