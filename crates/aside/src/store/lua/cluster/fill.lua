-- KEYS: entry, the lease's key (the entry itself, or its refresh key). ARGV: token, ttl ms,
-- record. Writes the record if the lease is still held: 1; else 0.
if redis.call('GET', KEYS[2]) ~= 'L ' .. ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
if KEYS[2] ~= KEYS[1] then redis.call('DEL', KEYS[2]) end
return 1
