-- KEYS: entry, the n tag clocks, stamps. ARGV: token, lease ms, version ttl ms, n.
-- A valid entry: its payload. Another loader's lease: 2. Else the placeholder is written and
-- the reply is the n clocks, then the version of each stamp.
local v = redis.call('GET', KEYS[1])
if v then
  if lease(v) then return 2 end
  local p = check(v)
  if p then return p end
end
redis.call('SET', KEYS[1], 'L ' .. ARGV[1], 'PX', ARGV[2])
local n = tonumber(ARGV[4])
local out = {}
for i = 2, n + 1 do out[#out + 1] = redis.call('GET', KEYS[i]) or '0' end
for i = n + 2, #KEYS do out[#out + 1] = version(KEYS[i], ARGV[3]) end
return out
