-- Data freshness of a connection. Ingest reports when new data of a
-- connection was stored (ReportDataArrival moves last_data_at forward) and
-- sweeps with its staleness threshold (MarkStaleConnections). The broker
-- keeps the state because it owns connections: ListConnections shows it, and
-- each flip writes its connection event in the same transaction.
ALTER TABLE connections ADD COLUMN last_data_at timestamptz;
ALTER TABLE connections ADD COLUMN stale boolean NOT NULL DEFAULT false;
ALTER TABLE connections ADD COLUMN stale_since timestamptz;
-- When freshness started being tracked for the row: the time of this
-- migration for connections that existed before it (their data arrived
-- before anyone recorded it, so their silence must not count from the day
-- they connected), the insertion time for new ones.
ALTER TABLE connections ADD COLUMN tracked_since timestamptz NOT NULL DEFAULT now();

-- The staleness sweep: active connections not yet stale, by the time from
-- which their silence is counted: the latest of the last data, the
-- connection itself (a reconnect starts the clock again) and the start of
-- tracking (greatest ignores a NULL last_data_at).
CREATE INDEX connections_freshness
    ON connections ((greatest(last_data_at, connected_at, tracked_since)))
    WHERE status = 'active' AND NOT stale;

-- The stale totals per vendor (a gauge on every ingest replica).
CREATE INDEX connections_stale ON connections (vendor) WHERE status = 'active' AND stale;

-- ListActiveConnections(connected_since): ingest looks for new connections
-- to backfill.
CREATE INDEX connections_active_connected ON connections (connected_at) WHERE status = 'active';

ALTER TABLE connection_events DROP CONSTRAINT connection_events_type_check;
ALTER TABLE connection_events ADD CONSTRAINT connection_events_type_check
    CHECK (type IN ('connected', 'refresh_failed', 'revoked', 'stale', 'fresh'));
