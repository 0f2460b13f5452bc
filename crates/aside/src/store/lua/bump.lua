-- KEYS: c tag clocks to advance, then the version keys to bump. ARGV: c.
-- The clocks first (fills learning a tag rely on it), then each existing version to
-- max(v + 1, now): versions only increase.
local t = redis.call('TIME')
local now = tonumber(t[1] .. string.sub('000000' .. t[2], -6))
local c = tonumber(ARGV[1])
for i = 1, c do
  if redis.call('INCR', KEYS[i]) == 1 then
    -- A new (or evicted) clock starts from the time, so it never repeats an earlier value.
    redis.call('SET', KEYS[i], string.format('%.0f', now))
  end
end
for i = c + 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v then
    local n = tonumber(v)
    if n == nil or n + 1 < now then
      redis.call('SET', KEYS[i], string.format('%.0f', now), 'KEEPTTL')
    else
      redis.call('INCR', KEYS[i])
    end
  end
end
return 1
