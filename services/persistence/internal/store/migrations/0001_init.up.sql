-- Schema "biometrics", owned by the persistence service. pgstore.Migrate runs
-- this with search_path set to the schema.
--
-- Identifiers use COLLATE "C": bytewise comparison is faster than a
-- linguistic collation and is the order the latest-value tie-break relies
-- on (the Go code compares the same way).

-- records: one row per vendor record, the current version. The identity
-- includes the user, so a vendor id reused across users never collides.
CREATE TABLE records (
    user_id          text COLLATE "C" NOT NULL,
    source           smallint         NOT NULL,
    vendor_record_id text COLLATE "C" NOT NULL,
    kind             text             NOT NULL,
    version          bigint           NOT NULL,
    content_hash     bytea            NOT NULL,
    event_id         uuid             NOT NULL,
    deleted          boolean          NOT NULL DEFAULT false,
    -- Distinct metrics and observation range of the current readings: lets
    -- a new version or a deletion find the old readings through the
    -- readings primary key (with partition pruning) instead of a second
    -- index that every insert would have to maintain.
    metrics          text[] COLLATE "C" NOT NULL DEFAULT '{}',
    observed_min     timestamptz,
    observed_max     timestamptz,
    created_at       timestamptz      NOT NULL DEFAULT now(),
    updated_at       timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, source, vendor_record_id)
);

-- events: every version of every record (upserts and deletions), kept as
-- the history after readings of older versions are replaced.
CREATE TABLE events (
    event_id         uuid             NOT NULL,
    received_at      timestamptz      NOT NULL,
    user_id          text COLLATE "C" NOT NULL,
    source           smallint         NOT NULL,
    vendor_record_id text COLLATE "C" NOT NULL,
    kind             text             NOT NULL,
    version          bigint           NOT NULL,
    operation        smallint         NOT NULL,
    occurred_at      timestamptz,
    content_hash     bytea,
    reading_count    integer          NOT NULL,
    PRIMARY KEY (event_id, received_at)
) PARTITION BY RANGE (received_at);
CREATE TABLE events_default PARTITION OF events DEFAULT;

-- readings: the current readings of every live record.
CREATE TABLE readings (
    user_id          text COLLATE "C" NOT NULL,
    metric           text COLLATE "C" NOT NULL,
    observed_at      timestamptz      NOT NULL,
    source           smallint         NOT NULL,
    vendor_record_id text COLLATE "C" NOT NULL,
    seq              integer          NOT NULL,
    value            double precision NOT NULL,
    start_time       timestamptz,
    device_name      text             NOT NULL DEFAULT '',
    device_model     text             NOT NULL DEFAULT '',
    device_bundle_id text             NOT NULL DEFAULT '',
    -- Serves QueryReadings (keyset pages in this order), the latest
    -- recomputation (backwards scan) and the replacement of old versions.
    PRIMARY KEY (user_id, metric, observed_at, source, vendor_record_id, seq)
) PARTITION BY RANGE (observed_at);
CREATE TABLE readings_default PARTITION OF readings DEFAULT;

-- latest: the newest reading per user and metric, maintained in the write
-- transaction. It is the source of truth the Redis cache is built from.
CREATE TABLE latest (
    user_id          text COLLATE "C" NOT NULL,
    metric           text COLLATE "C" NOT NULL,
    observed_at      timestamptz      NOT NULL,
    source           smallint         NOT NULL,
    vendor_record_id text COLLATE "C" NOT NULL,
    seq              integer          NOT NULL,
    value            double precision NOT NULL,
    start_time       timestamptz,
    device_name      text             NOT NULL DEFAULT '',
    device_model     text             NOT NULL DEFAULT '',
    device_bundle_id text             NOT NULL DEFAULT '',
    updated_at       timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, metric)
);

-- user_commits: a per-user counter bumped by every transaction that changes
-- the user's data (under the user's advisory lock, so in commit order). The
-- cache applies changes in this order and detects gaps with it.
CREATE TABLE user_commits (
    user_id text COLLATE "C" PRIMARY KEY,
    seq     bigint           NOT NULL
);

-- outbox: messages to publish, deleted once acknowledged (events keeps the
-- history). Ids come from a sequence inside the writer's transaction, after
-- it took the user's advisory lock: for one key, ids follow commit order.
CREATE TABLE outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic            text             NOT NULL,
    key              text COLLATE "C" NOT NULL,
    payload_type     smallint         NOT NULL,
    payload          bytea            NOT NULL,
    traceparent      text             NOT NULL DEFAULT '',
    created_at       timestamptz      NOT NULL DEFAULT now(),
    attempts         integer          NOT NULL DEFAULT 0,
    last_error       text             NOT NULL DEFAULT '',
    lease_token      uuid,
    lease_holder     text,
    lease_expires_at timestamptz,
    retry_after      timestamptz
) WITH (
    -- A queue table: rows are inserted, updated once or twice and deleted.
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05
);
-- Per-key heads and runs in id order.
CREATE INDEX outbox_key_id ON outbox (key, id);
CREATE INDEX outbox_lease_token ON outbox (lease_token) WHERE lease_token IS NOT NULL;

-- connection_events: ids of connection lifecycle events already appended, so
-- a retried AppendConnectionEvents is not published twice.
CREATE TABLE connection_events (
    event_id    text COLLATE "C" PRIMARY KEY,
    user_id     text COLLATE "C" NOT NULL,
    vendor      text             NOT NULL,
    type        smallint         NOT NULL,
    occurred_at timestamptz      NOT NULL,
    reason      text             NOT NULL DEFAULT '',
    created_at  timestamptz      NOT NULL DEFAULT now()
);

-- audit_log: every read of a user's data (caller, subject, what, when).
CREATE TABLE audit_log (
    at       timestamptz      NOT NULL,
    caller   text             NOT NULL,
    user_id  text COLLATE "C" NOT NULL,
    method   text             NOT NULL,
    metrics  text[]           NOT NULL DEFAULT '{}'
) PARTITION BY RANGE (at);
CREATE INDEX audit_log_user_at ON audit_log (user_id, at);
CREATE TABLE audit_log_default PARTITION OF audit_log DEFAULT;
