-- KEYS: entry, its refresh key. ARGV: ttl ms, record. A write voids any refresh in flight.
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
return 1
