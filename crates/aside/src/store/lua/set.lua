-- KEYS: entry, its refresh key, stamps. ARGV: ttl ms, version ttl ms, payload.
-- Writes the entry stamped with the current versions. A write voids any refresh in flight.
redis.call('DEL', KEYS[2])
local h = { tostring(#KEYS - 2) }
for i = 3, #KEYS do
  h[#h + 1] = KEYS[i]
  h[#h + 1] = version(KEYS[i], ARGV[2])
end
redis.call('SET', KEYS[1], table.concat(h, ' ') .. '\n' .. ARGV[3], 'PX', ARGV[1])
return 1
