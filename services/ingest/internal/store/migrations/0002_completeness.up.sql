-- Data completeness: backfill on connect, reconciliation, and the outbox
-- role of the job table for connection events.

-- group_key ties the pages of one backfill (or one reconciliation of one
-- connection) together: progress counts them, and a backfill is complete
-- when none of its jobs is unfinished.
ALTER TABLE jobs ADD COLUMN group_key text;
CREATE INDEX jobs_group ON jobs (group_key, state) WHERE group_key IS NOT NULL;

-- One row per connection generation (a reconnect has a new connected_at
-- and gets a backfill of its own). The primary key is the dedupe: however
-- many replicas see the new connection, its backfill is scheduled once.
-- Rows are kept after completion (done jobs are purged, these are not), so
-- a connection is never backfilled twice for the same generation.
CREATE TABLE backfills (
    user_id      text        NOT NULL,
    vendor       text        NOT NULL,
    connected_at timestamptz NOT NULL,
    group_key    text        NOT NULL UNIQUE,
    window_start timestamptz NOT NULL,
    window_end   timestamptz NOT NULL,
    -- Records handed to persistence (approximate: a page run twice counts
    -- twice; persistence stores it once).
    records      bigint      NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    PRIMARY KEY (user_id, vendor, connected_at)
);

-- New connections are searched for from the newest backfilled one.
CREATE INDEX backfills_connected ON backfills (connected_at);

-- The finisher looks at running backfills only.
CREATE INDEX backfills_running ON backfills (created_at) WHERE completed_at IS NULL;

-- Reconciliation rounds: one replica schedules each round. A claim that was
-- not completed in time (its replica died) can be taken over; the jobs are
-- deduplicated per connection and round, so a second scheduler adds nothing
-- twice.
CREATE TABLE reconcile_rounds (
    round        bigint      PRIMARY KEY,
    claimed_by   text        NOT NULL,
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    connections  integer     NOT NULL DEFAULT 0
);
