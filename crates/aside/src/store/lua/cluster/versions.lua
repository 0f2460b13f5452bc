-- KEYS: version keys of one slot. ARGV: version ttl ms. Their versions, created if missing.
local out = {}
for i = 1, #KEYS do out[i] = version(KEYS[i], ARGV[1]) end
return out
