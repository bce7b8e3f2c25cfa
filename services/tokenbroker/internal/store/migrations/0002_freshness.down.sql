DELETE FROM connection_events WHERE type IN ('stale', 'fresh');
ALTER TABLE connection_events DROP CONSTRAINT connection_events_type_check;
ALTER TABLE connection_events ADD CONSTRAINT connection_events_type_check
    CHECK (type IN ('connected', 'refresh_failed', 'revoked'));
DROP INDEX connections_active_connected;
DROP INDEX connections_stale;
DROP INDEX connections_freshness;
ALTER TABLE connections DROP COLUMN stale_since;
ALTER TABLE connections DROP COLUMN stale;
ALTER TABLE connections DROP COLUMN last_data_at;
