-- When freshness started being tracked for the row: the time of this
-- migration for connections that existed before it (their data arrived
-- before anyone recorded it, so their silence must not count from the day
-- they connected, or a deploy would mark every old connection stale at
-- once), the insertion time for new ones.
ALTER TABLE connections ADD COLUMN tracked_since timestamptz NOT NULL DEFAULT now();

-- The staleness sweep counts silence from the latest of the last data, the
-- connection itself (a reconnect starts the clock again) and the start of
-- tracking (greatest ignores a NULL last_data_at).
DROP INDEX connections_freshness;
CREATE INDEX connections_freshness
    ON connections ((greatest(last_data_at, connected_at, tracked_since)))
    WHERE status = 'active' AND NOT stale;
