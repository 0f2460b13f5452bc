-- KEYS: entry, the lease's key (the entry itself, or its refresh key), the lease's n stamps,
-- then the m tags learnt from the loaded value, then the clock of each learnt tag's shard.
-- ARGV: token, ttl ms, payload, version ttl ms, n, the n versions, then the m clock values
-- read at the claim.
-- Writes the entry if the lease is held, every stamp unchanged and no learnt tag's clock
-- moved: 1; else drops the lease: 0.
if redis.call('GET', KEYS[2]) ~= 'L ' .. ARGV[1] then return 0 end
local n = tonumber(ARGV[5])
local m = (#KEYS - 2 - n) / 2
local h = {}
for i = 1, n do
  local k, v = KEYS[2 + i], ARGV[5 + i]
  if redis.call('GET', k) ~= v then
    redis.call('DEL', KEYS[2])
    return 0
  end
  h[#h + 1] = k
  h[#h + 1] = v
end
-- Tags known only now: no tag of their shards may have been invalidated since the claim.
for j = 1, m do
  if (redis.call('GET', KEYS[2 + n + m + j]) or '0') ~= ARGV[5 + n + j] then
    redis.call('DEL', KEYS[2])
    return 0
  end
end
for j = 1, m do
  local t = KEYS[2 + n + j]
  h[#h + 1] = t
  h[#h + 1] = version(t, ARGV[4])
end
redis.call('SET', KEYS[1], tostring(#h / 2) .. ' ' .. table.concat(h, ' ') .. '\n' .. ARGV[3], 'PX', ARGV[2])
if KEYS[2] ~= KEYS[1] then redis.call('DEL', KEYS[2]) end
return 1
