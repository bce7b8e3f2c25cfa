-- Parked jobs (state 5) wait for the user rather than for time: the vendor
-- connection they need is broken (the vendor rejected its refresh token),
-- so running them would only burn their attempts to dead. They remember
-- whose connection (park_user_id with the job's vendor) and which
-- generation of it (park_generation, its connected_at) they waited on; a
-- newer generation (the user reconnected) makes them queued again.
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check CHECK (state BETWEEN 1 AND 5);
ALTER TABLE jobs ADD COLUMN park_user_id text;
ALTER TABLE jobs ADD COLUMN park_generation timestamptz;
CREATE INDEX jobs_parked ON jobs (vendor, park_user_id, park_generation) WHERE state = 5;
