-- KEYS: entry, the lease's key (the entry itself, or its refresh key), clock, the lease's n
-- stamps, then tags learnt from the loaded value.
-- ARGV: token, ttl ms, payload, version ttl ms, clock at claim, n, the n versions.
-- Writes the entry if the lease is held and every stamp unchanged (and, with learnt tags, the
-- clock too): 1; else drops the lease: 0.
if redis.call('GET', KEYS[2]) ~= 'L ' .. ARGV[1] then return 0 end
local n = tonumber(ARGV[6])
local h = {}
for i = 1, n do
  local k, v = KEYS[3 + i], ARGV[6 + i]
  if redis.call('GET', k) ~= v then
    redis.call('DEL', KEYS[2])
    return 0
  end
  h[#h + 1] = k
  h[#h + 1] = v
end
if #KEYS > 3 + n then
  -- Tags known only now: no tag may have been invalidated since the claim.
  if (redis.call('GET', KEYS[3]) or '0') ~= ARGV[5] then
    redis.call('DEL', KEYS[2])
    return 0
  end
  for i = 4 + n, #KEYS do
    h[#h + 1] = KEYS[i]
    h[#h + 1] = version(KEYS[i], ARGV[4])
  end
end
redis.call('SET', KEYS[1], tostring(#h / 2) .. ' ' .. table.concat(h, ' ') .. '\n' .. ARGV[3], 'PX', ARGV[2])
if KEYS[2] ~= KEYS[1] then redis.call('DEL', KEYS[2]) end
return 1
