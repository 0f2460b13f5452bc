-- KEYS: the namespace's tag clock if ARGV[1] is '1', then the version keys to bump.
-- Bumps each existing version to max(v + 1, now): versions only increase.
local t = redis.call('TIME')
local now = tonumber(t[1] .. string.sub('000000' .. t[2], -6))
local first = 1
if ARGV[1] == '1' then
  first = 2
  if redis.call('INCR', KEYS[1]) == 1 then
    -- A new (or evicted) clock starts from the time, so it never repeats an earlier value.
    redis.call('SET', KEYS[1], string.format('%.0f', now))
  end
end
for i = first, #KEYS do
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
