-- KEYS: the lease's key. ARGV: its token. Deletes the key if it still holds the lease.
if redis.call('GET', KEYS[1]) == 'L ' .. ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
