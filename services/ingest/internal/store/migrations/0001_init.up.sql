-- Schema "ingest", owned by the ingest service. pgstore.Migrate runs this
-- with search_path set to the schema.

-- jobs: the durable work queue. A webhook is acknowledged only after its job
-- row is committed here, so an acknowledged notification survives any crash.
CREATE TABLE jobs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vendor      text        NOT NULL,
    -- "webhook" now; "backfill" and "reconcile" later share the queue.
    kind        text        NOT NULL,
    -- The vendor's delivery identity (WHOOP trace_id, a hash of an Oura
    -- event): a redelivery hits the unique constraint and queues nothing.
    dedupe_key  text        NOT NULL,
    payload     jsonb       NOT NULL,
    -- Higher runs first: live webhooks must not wait behind a backfill.
    priority    smallint    NOT NULL DEFAULT 0,
    -- ingest.v1.JobState numbers: 1 queued, 2 running, 3 done, 4 dead.
    state       smallint    NOT NULL DEFAULT 1 CHECK (state BETWEEN 1 AND 4),
    attempts    integer     NOT NULL DEFAULT 0,
    -- Queued: the earliest start. Running: the lease expiry, after which
    -- another worker may take the job (its holder crashed). One column for
    -- both keeps "what is due" a single index range scan.
    run_at      timestamptz NOT NULL DEFAULT now(),
    -- A fresh token per lease fences a holder whose lease expired: its
    -- late completion matches no row.
    lease_token uuid,
    lease_owner text,
    last_error  text        NOT NULL DEFAULT '',
    outcome     text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    CONSTRAINT jobs_dedupe UNIQUE (vendor, dedupe_key)
);

-- What is due, in the order workers take it.
CREATE INDEX jobs_due ON jobs (priority DESC, run_at) WHERE state IN (1, 2);
-- ListJobs (by state, newest first) and the purge of old finished jobs.
CREATE INDEX jobs_state_created ON jobs (state, created_at DESC, id DESC);
