-- The console's sessions and login throttle: every write of these keys is one command
-- here, and every key written gets its TTL in that same step (nothing is ever left
-- behind without one, whatever fails between two commands).
--
-- Called as  EVALSHA <sha> <n> <keys...> <command> <args...>
-- (dispatcher/intake/console/sessions.py wraps each command; it builds the key names
-- with dispatcher.store.keys.Keys).
--
-- Keys (P = the key prefix):
--   P:session:{digest}          hash    one console session, by the SHA-256 of its cookie:
--                                       user, role, csrf (the session's CSRF token), created_at,
--                                       flash (a one-time message); TTL = the idle timeout,
--                                       renewed on every request (sessions.py, EXPIRE only).
--                                       A flash is written only into a session that exists:
--                                       never a hash without a TTL after a logout.
--   P:user_sessions:{name}      zset    the digests of one user's sessions, scored by the end of
--                                       each one's lifetime (epoch s); trimmed of ended ones on
--                                       every login; TTL = its latest session's end + 60 s.
--                                       (The previous release kept a set: taken over here.)
--   P:login_failures:pair:{u}:{client}   string  counter: password checks for user u from one
--                                       client address, in a fixed window
--   P:login_failures:user:{u}   string  counter: password checks for user u, every address
--   P:login_failures:client:{client}    string  counter: password checks from one address,
--                                       every user name
--                                       ({u}: 32 hex of the SHA-256 of the name typed; each
--                                       counter's TTL, the rest of its window, is set by the
--                                       INCR that creates it, in this script)

redis.replicate_commands()  -- TIME before writes (Redis < 5); a no-op on later ones
local cmd = ARGV[1]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

if cmd == 'session_create' then
  -- KEYS: session, user_sessions. ARGV: digest, user, role, csrf, created_at, idle_s,
  --       lifetime_s. Returns 1.
  local key, index = KEYS[1], KEYS[2]
  local digest, idle, lifetime = ARGV[2], tonumber(ARGV[7]), tonumber(ARGV[8])
  redis.call('HSET', key, 'user', ARGV[3], 'role', ARGV[4], 'csrf', ARGV[5],
             'created_at', ARGV[6])
  redis.call('EXPIRE', key, idle)
  if redis.call('TYPE', index).ok == 'set' then
    -- The previous release's set: its sessions end within a lifetime from now at most.
    local old = redis.call('SMEMBERS', index)
    redis.call('DEL', index)
    for _, d in ipairs(old) do redis.call('ZADD', index, now + lifetime, d) end
  end
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
  redis.call('ZADD', index, now + lifetime, digest)
  local last = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
  redis.call('EXPIRE', index, math.ceil(tonumber(last[2]) - now) + 60)
  return 1

elseif cmd == 'session_destroy' then
  -- KEYS: session, user_sessions. ARGV: digest. A logout: the session and its index entry.
  redis.call('DEL', KEYS[1])
  local kind = redis.call('TYPE', KEYS[2]).ok
  if kind == 'zset' then redis.call('ZREM', KEYS[2], ARGV[2]) end
  if kind == 'set' then redis.call('SREM', KEYS[2], ARGV[2]) end
  return 1

elseif cmd == 'session_flash' then
  -- KEYS: session. ARGV: message. Only into a live session (its TTL untouched): 1 if set.
  if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
  redis.call('HSET', KEYS[1], 'flash', ARGV[2])
  return 1

elseif cmd == 'login_attempt' then
  -- KEYS: the counters (pair, user, client). ARGV: window_s, then one limit per key.
  -- Counted before the password check, atomically: while every counter is under its
  -- limit, all are incremented and {'ok'} returned (the caller may check the password);
  -- else nothing is counted and {'blocked', index of the counter (1-based), seconds
  -- until it ends}. A counter found without a TTL (left by an older release) gets
  -- the window's: no lock is ever permanent.
  local window = tonumber(ARGV[2])
  for i, key in ipairs(KEYS) do
    local n = tonumber(redis.call('GET', key) or '0')
    if n >= tonumber(ARGV[i + 2]) then
      local left = redis.call('TTL', key)
      if left < 0 then
        redis.call('EXPIRE', key, window)
        left = window
      end
      return {'blocked', i, left}
    end
  end
  for _, key in ipairs(KEYS) do
    if redis.call('INCR', key) == 1 or redis.call('TTL', key) < 0 then
      redis.call('EXPIRE', key, window)
    end
  end
  return {'ok'}

elseif cmd == 'login_uncount' then
  -- KEYS: counters. The attempt they counted was not a failed check (the password
  -- was right, or it was never checked): one less each, never below zero (TTL kept).
  for _, key in ipairs(KEYS) do
    if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
  end
  return 1

elseif cmd == 'login_succeeded' then
  -- KEYS: pair, user, client. The password was right: the attempt counted before the
  -- check was no failure (user and client one less), and the user's failures from that
  -- address are forgiven (the pair counter ends). The user's own counter keeps the
  -- failures of others: a success never hands a spread-out guesser a fresh budget.
  redis.call('DEL', KEYS[1])
  for i = 2, #KEYS do
    if tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then redis.call('DECR', KEYS[i]) end
  end
  return 1
end

return redis.error_reply('sessions.lua: unknown command ' .. tostring(cmd))
