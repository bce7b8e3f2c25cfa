UPDATE jobs SET state = 1, run_at = now() WHERE state = 5;
DROP INDEX jobs_parked;
ALTER TABLE jobs DROP COLUMN park_generation;
ALTER TABLE jobs DROP COLUMN park_user_id;
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check CHECK (state BETWEEN 1 AND 4);
