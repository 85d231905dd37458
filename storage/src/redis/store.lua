-- Loaded after facts.lua as one script; its KEYS and ARGV are documented on
-- the constant that includes it (STORE_LUA).
local dkey = KEYS[1]
local ttl = ARGV[1]
local m = tonumber(ARGV[2])
local p = 3
local root = string.rep('\0', 8)
local result, deps = {}, {}
-- Commands with many arguments go in chunks (Lua's stack is bounded).
local function chunked(cmd, key, list, from, to)
  for i = from, to, 1000 do
    redis.call(cmd, key, unpack(list, i, math.min(i + 999, to)))
  end
end
-- The span records from `off` on: {span id, header, first byte, last byte} each.
local function records(blob, off)
  local out = {}
  while off <= #blob do
    local h1, h2 = string.byte(blob, off + 8, off + 9)
    local hend = off + 9 + h1 * 256 + h2
    local b1, b2, b3, b4 = string.byte(blob, hend + 1, hend + 4)
    local last = hend + 4 + ((b1 * 256 + b2) * 256 + b3) * 256 + b4
    out[#out + 1] = {string.sub(blob, off, off + 7), string.sub(blob, off + 10, hend), off, last}
    off = last + 1
  end
  return out
end
local function call(pinfo, csid, cinfo, tid)
  local psvc, csvc = string.sub(pinfo, 30), string.sub(cinfo, 30)
  if psvc ~= csvc then
    deps[#deps + 1] = string.sub(cinfo, 10, 29)
    deps[#deps + 1] = psvc .. '\0' .. csvc .. '\0' .. string.sub(cinfo, 1, 1) .. tid .. csid
  end
end
local function u32(n)
  return string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256)
end
for f = 1, m do
  local tkey, wkey = KEYS[2 * f], KEYS[2 * f + 1]
  local tid, n, nc, no = ARGV[p], tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2]), tonumber(ARGV[p + 3])
  local blob = ARGV[p + 4]
  local c = p + 5
  local o = c + 2 * nc
  p = o + no
  local stored = n
  if redis.call('SET', tkey, blob, 'NX', 'PX', ttl) then
    -- A new trace: every span is new (fragments hold no duplicates).
    for i = c, o - 1 do
      deps[#deps + 1] = ARGV[i]
    end
    if no > 0 then
      local _, first = parse_facts(blob)
      local spans, w = records(blob, first), {}
      for i = o, p - 1 do
        local r = spans[tonumber(ARGV[i])]
        w[#w + 1] = r[1]
        w[#w + 1] = r[2]
      end
      chunked('HSET', wkey, w, 1, #w)
      redis.call('PEXPIRE', wkey, ttl)
    end
  else
    local old = redis.call('GET', tkey)
    local facts, ofirst = parse_facts(old)
    local known = {}
    for _, r in ipairs(records(old, ofirst)) do
      known[r[1]] = r[2]
    end
    local given, first = parse_facts(blob)
    stored = 0
    local infos, new = {}, {}
    for _, r in ipairs(records(blob, first)) do
      if not known[r[1]] then
        stored = stored + 1
        infos[r[1]] = r[2]
        new[#new + 1] = string.sub(blob, r[3], r[4])
      end
    end
    local changed = false
    for name, value in pairs(given) do
      local was = facts[name]
      local longest = string.byte(name, 1) == 68
      if not was or (longest and value > was) or (not longest and value < was) then
        facts[name] = value
        changed = true
      end
    end
    if changed then
      local parts = {}
      for name, value in pairs(facts) do
        local svc = string.sub(name, 2)
        parts[#parts + 1] = string.sub(name, 1, 1) .. string.char(math.floor(#svc / 256), #svc % 256)
          .. svc .. string.format('%020.0f', value)
      end
      local fb = table.concat(parts)
      redis.call('SET', tkey, u32(#fb) .. fb .. string.sub(old, ofirst) .. table.concat(new), 'PX', ttl)
    elseif stored > 0 then
      redis.call('APPEND', tkey, table.concat(new))
      redis.call('PEXPIRE', tkey, ttl)
    end
    if stored > 0 then
      for sid, info in pairs(infos) do
        local parent = string.sub(info, 2, 9)
        if parent ~= root then
          local pinfo = infos[parent] or known[parent]
          if pinfo then
            call(pinfo, sid, info, tid)
          else
            redis.call('HSET', wkey, sid, info)
          end
        end
      end
      local waiting = redis.call('HGETALL', wkey)
      for j = 1, #waiting, 2 do
        local csid, cinfo = waiting[j], waiting[j + 1]
        local pinfo = infos[string.sub(cinfo, 2, 9)]
        if pinfo then
          call(pinfo, csid, cinfo, tid)
          redis.call('HDEL', wkey, csid)
        end
      end
      if #waiting > 0 then
        redis.call('PEXPIRE', wkey, ttl)
      end
    end
  end
  result[2 * f - 1] = stored
  result[2 * f] = n - stored
end
if #deps > 0 then
  chunked('ZADD', dkey, deps, 1, #deps)
  redis.call('PEXPIRE', dkey, ttl)
end
return result
