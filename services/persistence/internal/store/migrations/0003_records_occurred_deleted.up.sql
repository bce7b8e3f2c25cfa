-- The newest source time of a record and the time of its deletion, so a
-- stale or retried upsert can be told from a real change: an upsert older
-- than occurred_at is a stale fetch, and an upsert onto a tombstone is only
-- a re-creation when the source changed the record after deleted_at (never
-- for HealthKit, whose deleted sample UUIDs are gone for good).
--
-- occurred_at: the newest occurred_at of any accepted version (or of a
-- duplicate that carried a newer one); NULL while the source never sent one.
-- deleted_at: when the source deleted the record, set while deleted.
ALTER TABLE records
    ADD COLUMN occurred_at timestamptz,
    ADD COLUMN deleted_at  timestamptz;

-- Backfill from the history: the newest occurred_at of the record's upsert
-- events (older versions may have overwritten newer ones before this
-- migration, so the maximum is the safer bound, not the current version's).
UPDATE records r
SET occurred_at = e.occurred_at
FROM (
    SELECT user_id, source, vendor_record_id, max(occurred_at) AS occurred_at
    FROM events
    WHERE operation = 1 AND occurred_at IS NOT NULL
    GROUP BY user_id, source, vendor_record_id
) e
WHERE r.user_id = e.user_id AND r.source = e.source AND r.vendor_record_id = e.vendor_record_id;

-- A tombstone's current event is its DELETE event, whose occurred_at is the
-- deletion time; without one, the time the tombstone was written.
UPDATE records r
SET deleted_at = coalesce(
    (SELECT e.occurred_at FROM events e WHERE e.event_id = r.event_id AND e.operation = 2 LIMIT 1),
    r.updated_at)
WHERE r.deleted;
