-- One page of dead letters, read inside Redis (read-only, bounded by the budget).
--
-- Called as  EVALSHA <sha> 1 <prefix> <reason> <cursor id> <cursor score> <low> <high>
--            <want> <budget> <needle...>  (DeadLetterStore.scan, dispatcher/store/deadletter.py)
-- reason: '' for every letter; cursor id: '' from the top; low, high: score bounds as
-- ZRANGEBYSCORE takes them; want: hits wanted; budget: most index rows read; needles:
-- strings every matching record's JSON contains ('' = none).
--
-- Returns {exhausted 0/1, scanned, last id, last score, then id, score, record per hit}.
-- Rows are walked by rank from the cursor's letter, newest first; when that letter left
-- the index, the walk starts at its score, past the letters with that score and an id
-- >= its own (equal scores are ordered by id, descending, in a reverse range). So a page
-- costs the same with 10 letters or 100,000, and a replay or purge of letters before the
-- cursor cannot shift it.
--
-- Keys (P = the key prefix):
--   P:dlq              read  every dead-letter id, by last failure time (no reason given)
--   P:dlq:reason:{r}   read  the dead-letter ids of one reason
--   P:dl:{id}          read  the records

local P = KEYS[1]
local index = P .. ':dlq'
if ARGV[1] ~= '' then index = P .. ':dlq:reason:' .. ARGV[1] end
local cid, cscore = ARGV[2], tonumber(ARGV[3])
local low, want, budget = ARGV[4], tonumber(ARGV[6]), tonumber(ARGV[7])
local needles = {}
for i = 8, #ARGV do if ARGV[i] ~= '' then needles[#needles + 1] = ARGV[i] end end
local lowest = tonumber((string.gsub(low, '^%(', '')))
if low == '-inf' then lowest = -math.huge end
local start, skip_ties = 0, false
if cid ~= '' then
  local r = redis.call('ZREVRANK', index, cid)
  if r and tonumber(redis.call('ZSCORE', index, cid)) == cscore then
    start = r + 1
  else
    start = redis.call('ZCOUNT', index, '(' .. ARGV[3], '+inf')
    skip_ties = true
  end
elseif ARGV[5] ~= '+inf' then
  start = redis.call('ZCOUNT', index, '(' .. ARGV[5], '+inf')
end
local out = {}
local hits, scanned, exhausted = 0, 0, 0
local last_id, last_score = cid, ARGV[3]
while hits < want and scanned < budget do
  local n = math.min(500, budget - scanned)
  local rows = redis.call('ZREVRANGE', index, start, start + n - 1, 'WITHSCORES')
  if #rows == 0 then exhausted = 1 break end
  local stop = false
  for i = 1, #rows, 2 do
    local id, score = rows[i], rows[i + 1]
    start = start + 1
    local value = tonumber(score)
    if value < lowest then exhausted = 1 stop = true break end
    if not (skip_ties and value == cscore and id >= cid) then
      skip_ties = false
      scanned = scanned + 1
      last_id, last_score = id, score
      local raw = redis.call('GET', P .. ':dl:' .. id)
      local ok = raw ~= false
      if ok then
        for _, needle in ipairs(needles) do
          if not string.find(raw, needle, 1, true) then ok = false break end
        end
      end
      if ok then
        out[#out + 1] = id
        out[#out + 1] = score
        out[#out + 1] = raw
        hits = hits + 1
        if hits >= want or scanned >= budget then stop = true break end
      end
      if scanned >= budget then stop = true break end
    end
  end
  if stop then break end
  if #rows < 2 * n then exhausted = 1 break end
end
return {exhausted, scanned, last_id, last_score, unpack(out)}
