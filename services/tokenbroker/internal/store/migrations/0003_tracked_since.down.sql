DROP INDEX connections_freshness;
CREATE INDEX connections_freshness
    ON connections ((greatest(last_data_at, connected_at)))
    WHERE status = 'active' AND NOT stale;
ALTER TABLE connections DROP COLUMN tracked_since;
