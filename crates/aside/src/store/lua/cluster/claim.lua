-- KEYS: entry. ARGV: token, lease ms, the stamp line of an entry found invalid (or '').
-- Writes the placeholder unless the key holds a lease or a record other than the one found
-- invalid; returns 1 (granted), 2 (another lease) or that record (for the caller to check).
local v = redis.call('GET', KEYS[1])
if v then
  if lease(v) then return 2 end
  if check(v, true) then
    local nl = string.find(v, '\n', 1, true)
    if string.sub(v, 1, nl - 1) ~= ARGV[3] then return v end
  end
end
redis.call('SET', KEYS[1], 'L ' .. ARGV[1], 'PX', ARGV[2])
return 1
