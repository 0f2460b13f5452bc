-- KEYS: entry, its refresh key. ARGV: token, lease ms, fresh until.
-- Takes the refresh lease of a well-formed entry that is still the one the caller saw, and
-- returns its stamp line (for the caller to check); 0 if there is no such entry, 2 if another
-- refresh lease is held.
local v = redis.call('GET', KEYS[1])
if not v or lease(v) then return 0 end
local p = check(v, true)
if not p or fresh_until(p) ~= ARGV[3] then return 0 end
if not redis.call('SET', KEYS[2], 'L ' .. ARGV[1], 'NX', 'PX', ARGV[2]) then return 2 end
return string.sub(v, 1, string.find(v, '\n', 1, true))
