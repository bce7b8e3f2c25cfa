DROP TABLE erased_users;
DROP INDEX connection_events_user;
DELETE FROM connection_events WHERE type = 'backfill_completed';
ALTER TABLE connection_events DROP CONSTRAINT connection_events_type_check;
ALTER TABLE connection_events ADD CONSTRAINT connection_events_type_check
    CHECK (type IN ('connected', 'refresh_failed', 'revoked', 'stale', 'fresh'));
ALTER TABLE connection_events DROP COLUMN sequence;
DROP TABLE user_event_sequences;
