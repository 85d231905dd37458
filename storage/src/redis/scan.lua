-- Loaded after facts.lua as one script; its KEYS and ARGV are documented on
-- the constant that includes it (SCAN_LUA).
local max, min = ARGV[1], ARGV[2]
local off, budget, want = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local c = tonumber(ARGV[6])
local hp = ARGV[7]
local checks = {}
for j = 1, c do
  local b = 4 + 4 * j
  checks[j] = {ARGV[b] == 'h', ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])}
end
local out, scores, found, scanned, done, low = {}, {}, 0, 0, 0, ''
while scanned < budget and found < want do
  local chunk = math.min(256, budget - scanned)
  local page = redis.call('ZREVRANGEBYSCORE', KEYS[1], max, min, 'WITHSCORES', 'LIMIT', off, chunk)
  local n = #page / 2
  for j = 1, n do
    local tid = page[2 * j - 1]
    low = page[2 * j]
    off = off + 1
    scanned = scanned + 1
    local ok = true
    for _, check in ipairs(checks) do
      local score
      if check[1] then
        -- The facts usually fit in the first 512 bytes.
        local key = hp .. tid
        local head = redis.call('GETRANGE', key, 0, 511)
        if #head >= 4 then
          local b1, b2, b3, b4 = string.byte(head, 1, 4)
          local len = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
          if 4 + len > #head then
            head = redis.call('GETRANGE', key, 0, 3 + len)
          end
          score = parse_facts(head)[check[2]]
        end
      else
        score = redis.call('ZSCORE', check[2], tid)
      end
      if not score or (check[3] and tonumber(score) < check[3])
          or (check[4] and tonumber(score) > check[4]) then
        ok = false
        break
      end
    end
    if ok then
      found = found + 1
      out[found] = tid
      scores[found] = low
      if found >= want then
        break
      end
    end
  end
  if found < want and n < chunk then
    done = 1
    break
  end
end
return {off, done, out, scores, low}
