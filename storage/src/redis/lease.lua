-- Takes or extends a lease: KEYS[1] the lease key, ARGV[1] the holder,
-- ARGV[2] its time to live in milliseconds. 1 when the holder has it.
local held = redis.call('GET', KEYS[1])
if held == false or held == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
