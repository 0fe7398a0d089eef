"""The Lua scripts that make each step of a job one atomic Redis round trip.

Redis runs a script without interleaving other commands, so "check the
idempotency key, write the job state, push the message" or "check the execution
record, the pause and the rate limit, then claim" cannot be split by a crash or
a concurrent worker. Each script is loaded once per client (EVALSHA).
"""

from __future__ import annotations

from typing import Any

import redis

__all__ = [
    "CLAIM",
    "DEAD_LETTER",
    "ENQUEUE",
    "MOVE_DUE",
    "NETWORK_FAILURE",
    "REPLAY",
    "SUCCESS",
    "Scripts",
]

# KEYS: queue, stats, then (idempotency key, job key) per job.
# ARGV: now, ttl, then (job_id, envelope, agent_user, has_idempotency_key) per job.
# Returns the job id per job: the new one, or the first job's id for a known key.
ENQUEUE = """
local now, ttl = ARGV[1], tonumber(ARGV[2])
local n = (#KEYS - 2) / 2
local out, added = {}, 0
for i = 1, n do
  local idem, jobkey = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local base = 2 + (i - 1) * 4
  local job_id, env = ARGV[base + 1], ARGV[base + 2]
  local agent, has_idem = ARGV[base + 3], ARGV[base + 4]
  local existing = false
  if has_idem == '1' then existing = redis.call('GET', idem) end
  if existing then
    out[i] = existing
  else
    if has_idem == '1' then redis.call('SET', idem, job_id, 'EX', ttl) end
    redis.call('HSET', jobkey, 'state', 'queued', 'attempts', 0, 'enqueued_at', now,
               'updated_at', now, 'agent_user', agent)
    redis.call('EXPIRE', jobkey, ttl)
    redis.call('LPUSH', KEYS[1], env)
    added = added + 1
    out[i] = job_id
  end
end
if added > 0 then redis.call('HINCRBY', KEYS[2], 'enqueued', added) end
return out
"""

# KEYS: execution record, job state, pause, rate (GCRA tat).
# ARGV: now, seq, lease_s, ttl, rate_interval_s (0 = no limit), worker, max_rate_wait_s.
# Returns {verdict, detail}:
#   done      -> detail = lead_id: the job succeeded before; never call again
#   stale     -> an older publication of a job that has moved on; drop it
#   busy      -> detail = lease end: another worker is calling right now
#   orphaned  -> a worker claimed this publication and vanished mid-call
#   paused    -> detail = pause end, third item = reason
#   throttled -> detail = seconds until a rate-limit slot is free
#   ok        -> detail = seconds to wait for the reserved rate-limit slot
#   probe_refused -> as ok, but the server was paused for refusing us: check
#                the credentials (side-effect free) before calling
#   probe_outage  -> as ok, but this call is the one probe after an outage pause
CLAIM = """
local now, seq = tonumber(ARGV[1]), tonumber(ARGV[2])
local ex = redis.call('HMGET', KEYS[1], 'state', 'seq', 'lease_until', 'lead_id')
local state, eseq = ex[1], tonumber(ex[2] or '0')
if state == 'done' then return {'done', ex[4] or ''} end
if eseq > seq then return {'stale', tostring(eseq)} end
if state == 'claimed' and eseq == seq then
  local lease = tonumber(ex[3] or '0')
  if lease > now then return {'busy', tostring(lease)} end
  return {'orphaned', tostring(lease)}
end
local verdict = 'ok'
local pause = redis.call('HMGET', KEYS[3], 'until', 'reason', 'kind')
if pause[1] then
  if tonumber(pause[1]) > now then return {'paused', pause[1], pause[2] or ''} end
  if pause[3] == 'refused' or pause[3] == 'outage' then
    -- The cool-down is over: this worker alone probes (credentials, or for an
    -- outage the call itself) before the fleet resumes; everyone else sees the
    -- pause extended by the probe window.
    redis.call('HSET', KEYS[3], 'until', string.format('%.6f', now + tonumber(ARGV[3])),
               'probing', '1')
    verdict = 'probe_' .. pause[3]
  end
end
local delay = 0
local interval = tonumber(ARGV[5])
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[4]) or '0')
  if tat < now then tat = now end
  delay = tat - now
  if delay > tonumber(ARGV[7]) then return {'throttled', tostring(delay)} end
  local nxt = tat + interval
  redis.call('SET', KEYS[4], string.format('%.6f', nxt), 'PX',
             math.ceil((nxt - now) * 1000) + 1000)
end
redis.call('HSET', KEYS[1], 'state', 'claimed', 'seq', seq,
           'lease_until', string.format('%.6f', now + delay + tonumber(ARGV[3])),
           'worker', ARGV[6])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
redis.call('HSET', KEYS[2], 'state', 'running', 'updated_at', ARGV[1])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
return {verdict, string.format('%.6f', delay)}
"""

# KEYS: scheduled set, queue. ARGV: now, limit. Moves due retries onto the queue.
MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(due) do
  redis.call('LPUSH', KEYS[2], m)
  redis.call('ZREM', KEYS[1], m)
end
return #due
"""

# KEYS: record, all-index, reason-index, execution record, job state, stats.
# ARGV: id, record JSON, score, reason, next seq, ttl, attempts, error, now, http_status.
# Idempotent: writing the same dead letter twice leaves one record.
DEAD_LETTER = """
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[4], 'state', 'dead', 'seq', ARGV[5])
  redis.call('HDEL', KEYS[4], 'lease_until')
  redis.call('EXPIRE', KEYS[4], tonumber(ARGV[6]))
end
redis.call('HSET', KEYS[5], 'state', 'dead', 'reason', ARGV[4], 'attempts', ARGV[7],
           'error', ARGV[8], 'updated_at', ARGV[9], 'http_status', ARGV[10])
redis.call('HDEL', KEYS[5], 'next_attempt_at')
redis.call('EXPIRE', KEYS[5], tonumber(ARGV[6]))
redis.call('HINCRBY', KEYS[6], 'dead_lettered:' .. ARGV[4], 1)
return 1
"""

# KEYS: record, all-index, reason-index, execution record, job state, queue, stats.
# ARGV: id, envelope, seq of the new publication, ttl, now.
# Returns 1 (replayed), 0 (no such dead letter: already replayed or purged),
# or 'done' (the lead was added after all: the letter is removed, nothing is sent).
REPLAY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('HGET', KEYS[4], 'state') == 'done' then return 'done' end
redis.call('HSET', KEYS[4], 'state', 'queued', 'seq', ARGV[3])
redis.call('HDEL', KEYS[4], 'lease_until')
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[4]))
redis.call('HSET', KEYS[5], 'state', 'queued', 'attempts', 0, 'updated_at', ARGV[5])
redis.call('HDEL', KEYS[5], 'reason', 'error', 'http_status', 'next_attempt_at')
redis.call('EXPIRE', KEYS[5], tonumber(ARGV[4]))
redis.call('LPUSH', KEYS[6], ARGV[2])
redis.call('HINCRBY', KEYS[7], 'replayed', 1)
return 1
"""

# KEYS: breaker counter, pause. ARGV: now, threshold, base pause s, max pause s.
# Counts one more consecutive network failure; at the threshold, pauses calls to
# the server (doubling the pause on each trip while the outage lasts: a failed
# probe trips it again at once).
# Returns {failures, paused_until or '', newly_tripped 0/1}.
NETWORK_FAILURE = """
local now = tonumber(ARGV[1])
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 3600)
if n < tonumber(ARGV[2]) then return {n, '', 0} end
local p = redis.call('HMGET', KEYS[2], 'until', 'kind', 'trips', 'probing')
if p[2] == 'refused' then return {n, p[1] or '', 0} end
if p[1] and tonumber(p[1]) > now and p[4] ~= '1' then return {n, p[1], 0} end
local trips = tonumber(p[3] or '0') + 1
local d = math.min(tonumber(ARGV[3]) * 2 ^ (trips - 1), tonumber(ARGV[4]))
local untl = string.format('%.6f', now + d)
redis.call('HSET', KEYS[2], 'until', untl, 'kind', 'outage', 'reason', 'network',
           'trips', trips, 'since', ARGV[1], 'probing', '0')
redis.call('EXPIRE', KEYS[2], math.ceil(d) + 3600)
return {n, untl, 1}
"""

# KEYS: execution record, job state, stats, breaker, pause.
# ARGV: lead_id, list_id, campaign, now, done_ttl, job_ttl, attempts, latency bucket field,
#       latency ms.
# Marks the job done (for good: a later copy is suppressed), resets the breaker,
# and ends an outage pause. Returns 1 if an outage pause was ended.
SUCCESS = """
redis.call('HSET', KEYS[1], 'state', 'done', 'lead_id', ARGV[1], 'list_id', ARGV[2],
           'campaign', ARGV[3], 'done_at', ARGV[4])
redis.call('HDEL', KEYS[1], 'lease_until')
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
redis.call('HSET', KEYS[2], 'state', 'added', 'lead_id', ARGV[1], 'list_id', ARGV[2],
           'campaign', ARGV[3], 'updated_at', ARGV[4], 'attempts', ARGV[7])
redis.call('HDEL', KEYS[2], 'next_attempt_at', 'reason', 'error', 'http_status')
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[6]))
redis.call('HINCRBY', KEYS[3], 'added', 1)
redis.call('HINCRBY', KEYS[3], ARGV[8], 1)
redis.call('HINCRBY', KEYS[3], 'latency_count', 1)
redis.call('HINCRBYFLOAT', KEYS[3], 'latency_sum_ms', ARGV[9])
redis.call('DEL', KEYS[4])
if redis.call('HGET', KEYS[5], 'kind') == 'outage' then
  redis.call('DEL', KEYS[5])
  return 1
end
return 0
"""


class Scripts:
    """The scripts registered on one client."""

    def __init__(self, client: redis.Redis) -> None:
        self.enqueue: Any = client.register_script(ENQUEUE)
        self.claim: Any = client.register_script(CLAIM)
        self.move_due: Any = client.register_script(MOVE_DUE)
        self.dead_letter: Any = client.register_script(DEAD_LETTER)
        self.replay: Any = client.register_script(REPLAY)
        self.network_failure: Any = client.register_script(NETWORK_FAILURE)
        self.success: Any = client.register_script(SUCCESS)
