-- Removes a trace the cold tier has taken, only while its key is the
-- length it was read at (a span stored since makes it longer).
-- KEYS[1] trace key, KEYS[2] its orphans, KEYS[3] deps, KEYS[4..] the
-- indexes it is in; ARGV[1] expected length, ARGV[2] trace id, ARGV[3..]
-- its deps members.
if redis.call('STRLEN', KEYS[1]) ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
for i = 4, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[2])
end
local i = 3
while i <= #ARGV do
  local last = math.min(i + 999, #ARGV)
  redis.call('ZREM', KEYS[3], unpack(ARGV, i, last))
  i = last + 1
end
return 1
