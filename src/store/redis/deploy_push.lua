-- Stores a new version of a deployed key and tells every replica.
-- KEYS[1] P deploy:{kind}/{app}/{name}, KEYS[2] P deploys, KEYS[3] P events
-- ARGV[1] the version as JSON, ARGV[2] the key's text ({kind}/{app}/{name})
-- Answers the version's number: the list's new length (1 for the first,
-- one more per deploy, delete and rollback, as the embedded store counts).
local version = redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('PUBLISH', KEYS[3], 'd')
return version
