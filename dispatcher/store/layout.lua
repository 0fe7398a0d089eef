-- The version of the Redis layout: which keys exist, what they hold, what a job message says.
--
-- Called as  EVALSHA <sha> 2 <prefix> <queue> <command> <args...>  (dispatcher/store/layout.py).
-- Each release knows one layout version (dispatcher.store.layout.LAYOUT_VERSION) and the
-- migrations from every older one; what each version means is written in layout.py.
--
-- Without P:layout, `check` tells "absent: written by 1c0038d" from "absent: a fresh
-- Redis" without a SCAN: one EXISTS of keys that any use leaves behind (each exists
-- once anything was ever enqueued, a console user added or a worker started); the
-- keys marked "read" below.
--
-- Keys (P = the key prefix, Q = the Celery queue's name):
--   P:layout        string  the layout version, a whole number ("1", "2", ...). Absent in a
--                           Redis written only by release 1c0038d or earlier (that is version
--                           1), and in a Redis the dispatcher never wrote to.
--   P:layout:lock   string  the token of the one process migrating the layout (PX: it expires
--                           if that process dies); only its holder may advance P:layout.
--   P:stats         read    every enqueue counts in it (no TTL)
--   P:users         read    console users
--   P:workers       read    workers seen
--   P:scheduled     read    retries
--   Q, Q.{dialer}.{lane}  read  messages waiting (the dialers named by the caller)

local P, Q = KEYS[1], KEYS[2]
local cmd = ARGV[1]
local k_layout, k_lock = P .. ':layout', P .. ':layout:lock'

if cmd == 'check' then
  -- ARGV: the caller's layout version, write (1: a worker or a producer, 0: a reader),
  -- then dialer names. Returns {'set', version}, {'absent'} (absent, and the Redis holds
  -- data: version 1), {'fresh', version} (absent and nothing there: a writer's version is
  -- written now, in the same step, so two first processes cannot both believe they
  -- started a fresh Redis) or {'empty'} (the same, for a reader: nothing written).
  local found = redis.call('GET', k_layout)
  if found then return {'set', found} end
  local markers = {P .. ':stats', P .. ':users', P .. ':workers', P .. ':scheduled', Q}
  for i = 4, #ARGV do
    table.insert(markers, Q .. '.' .. ARGV[i] .. '.realtime')
    table.insert(markers, Q .. '.' .. ARGV[i] .. '.bulk')
  end
  if redis.call('EXISTS', unpack(markers)) > 0 then return {'absent'} end
  if ARGV[3] ~= '1' then return {'empty'} end
  redis.call('SET', k_layout, ARGV[2])
  return {'fresh', ARGV[2]}

elseif cmd == 'record' then
  -- ARGV: version. An absent version is written (the layout is version 1 and this
  -- release needs no migration from it). Returns the version now set.
  redis.call('SET', k_layout, ARGV[2], 'NX')
  return redis.call('GET', k_layout)

elseif cmd == 'lock' then
  -- ARGV: token, milliseconds. 1 if this token now holds the migration lock.
  if redis.call('SET', k_lock, ARGV[2], 'NX', 'PX', ARGV[3]) then return 1 end
  return 0

elseif cmd == 'unlock' then
  -- ARGV: token. Only the holder's own lock is removed (one that expired and was
  -- taken by another process stays).
  if redis.call('GET', k_lock) == ARGV[2] then
    redis.call('DEL', k_lock)
    return 1
  end
  return 0

elseif cmd == 'advance' then
  -- ARGV: token, from, to. The version goes from `from` to `to` only while the token
  -- holds the lock (fenced: a migrator whose lock expired cannot write) and the version
  -- is still `from` (absent counts as 1). Returns {'ok'}, {'fenced'} or {'moved', version}.
  if redis.call('GET', k_lock) ~= ARGV[2] then return {'fenced'} end
  local found = redis.call('GET', k_layout) or '1'
  if found ~= ARGV[3] then return {'moved', found} end
  redis.call('SET', k_layout, ARGV[4])
  return {'ok'}
end

return redis.error_reply('layout.lua: unknown command ' .. tostring(cmd))
