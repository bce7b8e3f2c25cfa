-- A refresh is claimed on the connection row before the vendor is asked,
-- as well as under the Redis lock: losing the Redis lock (failover, a
-- restart without persistence, eviction) must not let a second instance
-- present the same single-use refresh token. The claim names its holder
-- (the lock's owner value) and expires, so a holder that died does not
-- block refreshes for longer than its lease; a holder still storing its
-- result extends it. Storing refreshed tokens clears the claim.
ALTER TABLE connections ADD COLUMN refresh_claim_owner text;
ALTER TABLE connections ADD COLUMN refresh_claim_until timestamptz;
