-- Helpers every script that reads entries or versions starts with (see record.rs for the
-- format they read and write).

-- Whether v is a lease placeholder: 'L <token>'.
local function lease(v)
  return string.byte(v, 1) == 76 and string.match(v, '^L %d+$') ~= nil
end

-- The payload of a valid record; else nil and 0 (stale stamps) or 3 (not a record). With
-- shape_only, the stamps are not read: only whether v is a well-formed record.
local function check(v, shape_only)
  local nl = string.find(v, '\n', 1, true)
  if not nl then return nil, 3 end
  local head = string.sub(v, 1, nl - 1)
  local i = string.find(head, ' ', 1, true)
  if not i then return nil, 3 end
  local n = tonumber(string.sub(head, 1, i - 1))
  if not n then return nil, 3 end
  local count, stale = 0, false
  while i do
    local j = string.find(head, ' ', i + 1, true)
    if not j then return nil, 3 end
    local e = string.find(head, ' ', j + 1, true)
    local ver = string.sub(head, j + 1, (e or (#head + 1)) - 1)
    if not string.match(ver, '^%d+$') then return nil, 3 end
    count = count + 1
    if not stale and not shape_only and redis.call('GET', string.sub(head, i + 1, j - 1)) ~= ver then
      stale = true
    end
    i = e
  end
  if count ~= n then return nil, 3 end
  if stale then return nil, 0 end
  return string.sub(v, nl + 1)
end

-- The freshness an entry's payload (the engine's envelope) carries, as a string; nil if none.
local function fresh_until(p)
  return string.match(p, '^1 %d+ [vn] (%d+)\n')
end

-- The version of key k, created from the server's time (µs) if missing; kept alive for at
-- least ttl ms either way.
local function version(k, ttl)
  local v = redis.call('GET', k)
  if not v then
    local t = redis.call('TIME')
    v = t[1] .. string.sub('000000' .. t[2], -6)
    redis.call('SET', k, v, 'PX', ttl)
  else
    local pt = redis.call('PTTL', k)
    if pt >= 0 and pt < tonumber(ttl) then redis.call('PEXPIRE', k, ttl) end
  end
  return v
end
