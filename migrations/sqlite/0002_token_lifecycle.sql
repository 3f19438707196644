-- Token lifecycle: refresh leases and backoff, disconnect with pending upstream revocation, audit.
ALTER TABLE connections ADD COLUMN has_refresh_token INTEGER NOT NULL DEFAULT 0;
ALTER TABLE connections ADD COLUMN last_refreshed_at INTEGER;
ALTER TABLE connections ADD COLUMN last_error TEXT;
ALTER TABLE connections ADD COLUMN refresh_failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE connections ADD COLUMN next_attempt_at INTEGER;
-- The instance refreshing this connection, and until when; a crashed holder's lease runs out.
ALTER TABLE connections ADD COLUMN lease_owner TEXT;
ALTER TABLE connections ADD COLUMN lease_until INTEGER;
CREATE INDEX connections_due ON connections (status, has_refresh_token, expires_at);

-- Upstream revocations that failed at disconnect time, retried in the background.
CREATE TABLE pending_revocations (
    id                TEXT PRIMARY KEY,
    project_id        TEXT NOT NULL REFERENCES projects(id),
    endpoint_id       TEXT NOT NULL,
    provider          TEXT NOT NULL,
    remote_user_id    TEXT NOT NULL,
    token_key_id      TEXT NOT NULL,
    token_ciphertext  BLOB NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   INTEGER NOT NULL,
    last_error        TEXT,
    created_at        INTEGER NOT NULL
);
CREATE INDEX pending_revocations_due ON pending_revocations (next_attempt_at);

-- Who read which access token, when.
CREATE TABLE audit_log (
    id           TEXT PRIMARY KEY,
    project_id   TEXT NOT NULL REFERENCES projects(id),
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    endpoint_id  TEXT,
    at           INTEGER NOT NULL
);
CREATE INDEX audit_log_by_project ON audit_log (project_id, at);
