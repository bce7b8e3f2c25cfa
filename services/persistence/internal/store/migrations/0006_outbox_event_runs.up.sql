-- An outbox row may carry a run of one key's events (payload_type 3),
-- written by one transaction in commit order: a push of a thousand samples
-- of one user is one row instead of a thousand (the rows, their index
-- entries and their WAL were a fifth of such a write's cost). Leasing
-- hands the run out as one entry per event, so publishers see the same
-- entries as before:
--
--   * event_count: the events in the row (1 for every other payload type);
--   * sent: how many of them, from the first, were acknowledged as
--     published (acknowledging a prefix moves it; the row goes when every
--     event is acknowledged);
--   * lease_upto: how many, from the first, the current lease handed out
--     (a lease may take only part of a run).
--
-- Entry ids: event i (from 0) of the run in row r is entry r + 1 + i. Row
-- ids are drawn 1024 apart from now on, so those ids belong to no other
-- row (a run holds at most 1023 events) and entry ids still follow commit
-- order within a key. A persistence replica of the previous release acks
-- by row id only, which never names a run's row, so it cannot drop events
-- it did not see (it fails a lease that meets a run; the publisher leases
-- again from another replica).
ALTER TABLE outbox
    ADD COLUMN event_count integer NOT NULL DEFAULT 1,
    ADD COLUMN sent        integer NOT NULL DEFAULT 0,
    ADD COLUMN lease_upto  integer NOT NULL DEFAULT 0;

-- A run is larger than the inline limit, so it is stored out of line, and
-- its events repeat the user id, kind, metric and device names: lz4 halves
-- a HealthKit run, and with it the pages and WAL written, for less CPU than
-- the pages cost (pglz, the default, compresses as well but costs more than
-- it saves). A server built without lz4 stores runs uncompressed instead.
DO $$
BEGIN
    ALTER TABLE outbox ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    ALTER TABLE outbox ALTER COLUMN payload SET STORAGE EXTERNAL;
END
$$;

ALTER SEQUENCE outbox_id_seq INCREMENT BY 1024;
