DROP INDEX jobs_payload_user;
DROP TABLE erasures;
