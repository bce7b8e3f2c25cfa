-- One order for a user's connection events. Every connection event of a
-- user (the broker's own and ingest's backfill_completed, recorded through
-- RecordConnectionEvent) takes the next number of the user's counter in the
-- transaction that records it. The counter row is locked until that
-- transaction commits, so numbers follow commit order per user, and the
-- number travels with the event to Kafka for consumers to order by.
CREATE TABLE user_event_sequences (
    user_id  text   PRIMARY KEY,
    sequence bigint NOT NULL
);

ALTER TABLE connection_events ADD COLUMN sequence bigint NOT NULL DEFAULT 0;

-- Number the events already recorded in the order they were written.
UPDATE connection_events e SET sequence = x.n
FROM (SELECT event_id, row_number() OVER (PARTITION BY user_id ORDER BY created_at, event_id) AS n
      FROM connection_events) x
WHERE e.event_id = x.event_id;
INSERT INTO user_event_sequences (user_id, sequence)
SELECT user_id, max(sequence) FROM connection_events GROUP BY user_id;

ALTER TABLE connection_events DROP CONSTRAINT connection_events_type_check;
ALTER TABLE connection_events ADD CONSTRAINT connection_events_type_check
    CHECK (type IN ('connected', 'refresh_failed', 'revoked', 'stale', 'fresh', 'backfill_completed'));

-- Erasure deletes a user's events.
CREATE INDEX connection_events_user ON connection_events (user_id);

-- Users whose connections were erased (DeleteUserData), by keyed pseudonym
-- (HMAC with LOG_PSEUDONYM_KEY), never by id: a new authorization for such a
-- user is refused, so an erased user id does not get connections again.
CREATE TABLE erased_users (
    subject   text        PRIMARY KEY,
    erased_at timestamptz NOT NULL DEFAULT now()
);
