-- erasures: one row per user erasure (DeleteUserData), keyed by the user's
-- keyed pseudonym (HMAC with LOG_PSEUDONYM_KEY), never the id. step is the
-- last step that finished, so a retry after a crash resumes after it;
-- completed_at is set once every step is done. The row stays after
-- completion: it makes a second erasure a no-op and lets HealthKit pushes
-- for the user be refused at the door.
CREATE TABLE erasures (
    subject      text        PRIMARY KEY,
    requested_by text        NOT NULL,
    step         smallint    NOT NULL DEFAULT 0,
    attempts     integer     NOT NULL DEFAULT 1,
    started_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz
);

-- Erasure finds the jobs of a user (backfill and reconcile pages,
-- connection events) and of a vendor account (webhooks) by their payload.
CREATE INDEX jobs_payload_user ON jobs ((payload->>'user_id'));
