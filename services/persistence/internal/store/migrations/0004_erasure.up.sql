-- Erasure and connection event order.

-- erased_users: users whose data was erased (DeleteUserData), by their keyed
-- pseudonym (HMAC with LOG_PSEUDONYM_KEY), never by id. A write for a user
-- listed here is refused, so a late webhook or a retried push cannot bring an
-- erased user's data back. Rotating LOG_PSEUDONYM_KEY forgets these rows.
CREATE TABLE erased_users (
    subject   text COLLATE "C" PRIMARY KEY,
    erased_at timestamptz      NOT NULL DEFAULT now()
);

-- Erasure finds a user's events without scanning every partition.
CREATE INDEX events_user ON events (user_id);

-- The per-user sequence the token broker assigns to each connection event
-- (0 for events appended before sequences existed). The user_erased event
-- takes the next one.
ALTER TABLE connection_events ADD COLUMN sequence bigint NOT NULL DEFAULT 0;
