-- KEYS: entry, clock, stamps. ARGV: token, lease ms, version ttl ms.
-- A valid entry: its payload. Another loader's lease: 2. Else the placeholder is written and
-- the reply is the clock, then the version of each stamp.
local v = redis.call('GET', KEYS[1])
if v then
  if lease(v) then return 2 end
  local p = check(v)
  if p then return p end
end
redis.call('SET', KEYS[1], 'L ' .. ARGV[1], 'PX', ARGV[2])
local out = { redis.call('GET', KEYS[2]) or '0' }
for i = 3, #KEYS do out[#out + 1] = version(KEYS[i], ARGV[3]) end
return out
