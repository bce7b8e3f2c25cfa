-- One row per (user, vendor). Tokens are AES-256-GCM ciphertexts sealed with
-- the key named in key_id; they are NULL once the connection is revoked.
-- version is the fence of every token write: a writer updates
-- WHERE version = <the version it read> and bumps it, so a stale writer
-- (a refresh that lost its lock, a refresh racing a reconnect) changes nothing.
CREATE TABLE connections (
    user_id            text        NOT NULL,
    vendor             text        NOT NULL,
    vendor_user_id     text        NOT NULL,
    status             text        NOT NULL CHECK (status IN ('active', 'broken', 'revoked')),
    scopes             text[]      NOT NULL DEFAULT '{}',
    key_id             text,
    access_token_enc   bytea,
    refresh_token_enc  bytea,
    access_expires_at  timestamptz,
    version            bigint      NOT NULL DEFAULT 1,
    broken_reason      text        NOT NULL DEFAULT '',
    connected_at       timestamptz NOT NULL,
    last_refresh_at    timestamptz,
    last_used_at       timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, vendor),
    CHECK ((key_id IS NULL) = (access_token_enc IS NULL)),
    CHECK (status <> 'revoked' OR (access_token_enc IS NULL AND refresh_token_enc IS NULL))
);

-- A vendor account maps to one internal user while connected: webhooks are
-- routed by it (ResolveVendorUser).
CREATE UNIQUE INDEX connections_vendor_user_live
    ON connections (vendor, vendor_user_id) WHERE status <> 'revoked';

-- Proactive refresh looks for active connections that expire soon.
CREATE INDEX connections_active_expiry
    ON connections (access_expires_at) WHERE status = 'active';

-- Key rotation looks for rows sealed with an old key.
CREATE INDEX connections_key_id ON connections (key_id) WHERE key_id IS NOT NULL;

-- Pending authorizations. The state itself is never stored, only its
-- SHA-256, so reading this table does not let anyone complete someone
-- else's authorization. Consumed by DELETE ... RETURNING (single use).
CREATE TABLE oauth_states (
    state_hash         bytea       PRIMARY KEY,
    user_id            text        NOT NULL,
    vendor             text        NOT NULL,
    key_id             text        NOT NULL,
    code_verifier_enc  bytea       NOT NULL,
    return_to          text        NOT NULL DEFAULT '',
    created_at         timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL
);

CREATE INDEX oauth_states_expires ON oauth_states (expires_at);

-- Outbox of connection lifecycle events, written in the same transaction as
-- the change they describe and relayed to PersistenceService
-- (AppendConnectionEvents is idempotent by event_id, so a relay that crashes
-- after forwarding and before marking simply forwards again).
CREATE TABLE connection_events (
    event_id      uuid        PRIMARY KEY,
    user_id       text        NOT NULL,
    vendor        text        NOT NULL,
    type          text        NOT NULL CHECK (type IN ('connected', 'refresh_failed', 'revoked')),
    reason        text        NOT NULL DEFAULT '',
    occurred_at   timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    forwarded_at  timestamptz,
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text        NOT NULL DEFAULT ''
);

CREATE INDEX connection_events_pending
    ON connection_events (created_at, event_id) WHERE forwarded_at IS NULL;
