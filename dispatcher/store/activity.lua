-- The console's last-hour chart: one sample of the fleet's cumulative counters a minute.
--
-- Called as  EVALSHA <sha> 1 <prefix> <minute epoch> <keep seconds>
-- (dispatcher/store/activity.py). The first caller in a minute writes the sample;
-- later callers (other workers, the console) change nothing. Samples older than the
-- keep time are trimmed in the same step, so the set stays small (~180 members).
-- Returns 1 if this call wrote the sample, else 0.
--
-- Keys (P = the key prefix):
--   P:activity   zset  one member per minute, "{minute}:{added}:{dead}" (the counters'
--                      totals then), scored by the minute's epoch
--   P:stats      read  the fleet counters (execution.lua): `added` and every
--                      `dead_lettered:{reason}`

local P = KEYS[1]
local k_stats, k_activity = P .. ':stats', P .. ':activity'
local m = tonumber(ARGV[1])
if #redis.call('ZRANGEBYSCORE', k_activity, m, m, 'LIMIT', 0, 1) > 0 then return 0 end
local flat = redis.call('HGETALL', k_stats)
local added, dead = 0, 0
for i = 1, #flat, 2 do
  local k = flat[i]
  if k == 'added' then added = tonumber(flat[i + 1]) or 0
  elseif string.sub(k, 1, 14) == 'dead_lettered:' then dead = dead + (tonumber(flat[i + 1]) or 0)
  end
end
redis.call('ZADD', k_activity, m, string.format('%d:%d:%d', m, added, dead))
redis.call('ZREMRANGEBYSCORE', k_activity, '-inf', m - tonumber(ARGV[2]))
return 1
