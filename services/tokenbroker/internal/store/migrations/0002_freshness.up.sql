-- Data freshness of a connection. Ingest reports when new data of a
-- connection was stored (ReportDataArrival moves last_data_at forward) and
-- sweeps with its staleness threshold (MarkStaleConnections). The broker
-- keeps the state because it owns connections: ListConnections shows it, and
-- each flip writes its connection event in the same transaction.
ALTER TABLE connections ADD COLUMN last_data_at timestamptz;
ALTER TABLE connections ADD COLUMN stale boolean NOT NULL DEFAULT false;
ALTER TABLE connections ADD COLUMN stale_since timestamptz;

-- The staleness sweep: active connections not yet stale, by the time from
-- which their silence is counted (the later of the last data and the
-- connection itself, so a reconnect starts the clock again; greatest
-- ignores a NULL last_data_at).
CREATE INDEX connections_freshness
    ON connections ((greatest(last_data_at, connected_at)))
    WHERE status = 'active' AND NOT stale;

-- The stale totals per vendor (a gauge on every ingest replica).
CREATE INDEX connections_stale ON connections (vendor) WHERE status = 'active' AND stale;

-- ListActiveConnections(connected_since): ingest looks for new connections
-- to backfill.
CREATE INDEX connections_active_connected ON connections (connected_at) WHERE status = 'active';

ALTER TABLE connection_events DROP CONSTRAINT connection_events_type_check;
ALTER TABLE connection_events ADD CONSTRAINT connection_events_type_check
    CHECK (type IN ('connected', 'refresh_failed', 'revoked', 'stale', 'fresh'));
