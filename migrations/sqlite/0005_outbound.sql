-- Outbound events to the platform (Standard Webhooks): the platform's endpoints, the events (the
-- outbox, written in the transaction of the change that caused them) and one delivery per event
-- and endpoint, each sent by a job of the one queue.
CREATE TABLE webhook_endpoints (
    id                          TEXT PRIMARY KEY,
    project_id                  TEXT NOT NULL REFERENCES projects(id),
    url                         TEXT NOT NULL,
    description                 TEXT,
    -- JSON array of event types; NULL for every type.
    events                      TEXT,
    enabled                     INTEGER NOT NULL DEFAULT 1,
    disabled_reason             TEXT,
    secret_key_id               TEXT NOT NULL,
    secret_ciphertext           BLOB NOT NULL,
    -- The secret before the last rotation, still signing until previous_secret_until.
    previous_secret_key_id      TEXT,
    previous_secret_ciphertext  BLOB,
    previous_secret_until       INTEGER,
    -- Since when every delivery failed (NULL after a success).
    failing_since               INTEGER,
    created_at                  INTEGER NOT NULL,
    updated_at                  INTEGER NOT NULL
);
CREATE INDEX webhook_endpoints_by_project ON webhook_endpoints (project_id);

CREATE TABLE outbound_events (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects(id),
    event_type  TEXT NOT NULL,
    -- The exact JSON every delivery sends.
    body        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,
    event_id         TEXT NOT NULL,
    endpoint_id      TEXT NOT NULL,
    project_id       TEXT NOT NULL,
    -- pending | delivered | failed
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_status      INTEGER,
    last_error       TEXT,
    next_attempt_at  INTEGER,
    created_at       INTEGER NOT NULL,
    delivered_at     INTEGER
);
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, created_at);
CREATE INDEX webhook_deliveries_by_event ON webhook_deliveries (event_id);
