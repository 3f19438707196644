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
    enabled                     BIGINT NOT NULL DEFAULT 1,
    disabled_reason             TEXT,
    secret_key_id               TEXT NOT NULL,
    secret_ciphertext           BYTEA NOT NULL,
    -- The secret before the last rotation, still signing until previous_secret_until.
    previous_secret_key_id      TEXT,
    previous_secret_ciphertext  BYTEA,
    previous_secret_until       BIGINT,
    -- Since when every delivery failed (NULL after a success).
    failing_since               BIGINT,
    created_at                  BIGINT NOT NULL,
    updated_at                  BIGINT NOT NULL
);
CREATE INDEX webhook_endpoints_by_project ON webhook_endpoints (project_id);

CREATE TABLE outbound_events (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects(id),
    event_type  TEXT NOT NULL,
    -- The exact JSON every delivery sends.
    body        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,
    event_id         TEXT NOT NULL,
    endpoint_id      TEXT NOT NULL,
    project_id       TEXT NOT NULL,
    -- pending | delivered | failed
    state            TEXT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    last_status      BIGINT,
    last_error       TEXT,
    next_attempt_at  BIGINT,
    created_at       BIGINT NOT NULL,
    delivered_at     BIGINT
);
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, created_at);
CREATE INDEX webhook_deliveries_by_event ON webhook_deliveries (event_id);
