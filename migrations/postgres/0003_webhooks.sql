-- Inbound provider webhooks: a durable, deduplicated inbox processed by a background worker.
CREATE TABLE webhook_events (
    id               TEXT PRIMARY KEY,
    project_id       TEXT NOT NULL REFERENCES projects(id),
    provider         TEXT NOT NULL,
    -- What makes a provider's retry of the same event the same event.
    dedup_key        TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    remote_user_id   TEXT,
    endpoint_id      TEXT,
    patient_id       TEXT,
    payload          TEXT NOT NULL,
    -- received (to process) | pending_sync | done | ignored | dead
    state            TEXT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    last_error       TEXT,
    received_at      BIGINT NOT NULL,
    processed_at     BIGINT,
    UNIQUE (project_id, provider, dedup_key)
);
CREATE INDEX webhook_events_due ON webhook_events (state, next_attempt_at);
CREATE INDEX webhook_events_by_patient ON webhook_events (project_id, patient_id, received_at);

CREATE INDEX connections_by_remote_user ON connections (project_id, provider, remote_user_id);
