-- KEYS: entry, its refresh key, the n tag clocks, stamps. ARGV: token, lease ms, version ttl
-- ms, fresh until, n. Takes the refresh lease of a valid entry that is still the one the
-- caller saw (same freshness): the reply is the n clocks, then the version of each stamp. 0
-- if there is no such entry, 2 if another refresh lease is held.
local v = redis.call('GET', KEYS[1])
if not v or lease(v) then return 0 end
local p = check(v)
if not p or fresh_until(p) ~= ARGV[4] then return 0 end
if not redis.call('SET', KEYS[2], 'L ' .. ARGV[1], 'NX', 'PX', ARGV[2]) then return 2 end
local n = tonumber(ARGV[5])
local out = {}
for i = 3, n + 2 do out[#out + 1] = redis.call('GET', KEYS[i]) or '0' end
for i = n + 3, #KEYS do out[#out + 1] = version(KEYS[i], ARGV[3]) end
return out
