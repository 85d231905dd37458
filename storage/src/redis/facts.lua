-- The facts of a stored trace (see `trace_blob` in blob.rs), as a table
-- name (kind and service) -> duration, and the position of its first span
-- record. Shared by the scripts: each is this file followed by its own.
local function parse_facts(blob)
  local b1, b2, b3, b4 = string.byte(blob, 1, 4)
  local stop = 5 + ((b1 * 256 + b2) * 256 + b3) * 256 + b4
  local out, off = {}, 5
  while off < stop do
    local slen = string.byte(blob, off + 1) * 256 + string.byte(blob, off + 2)
    out[string.sub(blob, off, off) .. string.sub(blob, off + 3, off + 2 + slen)] =
      tonumber(string.sub(blob, off + 3 + slen, off + 22 + slen))
    off = off + 23 + slen
  end
  return out, stop
end
