ALTER TABLE connection_events DROP COLUMN sequence;
DROP INDEX events_user;
DROP TABLE erased_users;
