-- Data sync: one work queue for every background job, FHIR history and search columns, sync
-- progress per connection, and rate-limit windows per provider application.

-- The one queue: webhook events, backfills, resyncs and reconciliations (later outbound
-- deliveries). A job is claimed with a lease; completing it is fenced on the lease owner.
CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    project_id   TEXT NOT NULL REFERENCES projects(id),
    endpoint_id  TEXT,
    -- At most one job per (kind, unique_key); NULL for jobs that may repeat.
    unique_key   TEXT,
    payload      TEXT NOT NULL,
    -- Lower runs first (webhook-driven work before backfills).
    priority     BIGINT NOT NULL DEFAULT 0,
    attempts     BIGINT NOT NULL DEFAULT 0,
    due_at       BIGINT NOT NULL,
    lease_owner  TEXT,
    lease_until  BIGINT,
    last_error   TEXT,
    created_at   BIGINT NOT NULL,
    UNIQUE (kind, unique_key)
);
CREATE INDEX jobs_due ON jobs (due_at, priority);
CREATE INDEX jobs_by_endpoint ON jobs (endpoint_id);

-- Every version of every resource (vread); kept by triggers so no write path can forget it.
CREATE TABLE fhir_history (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    version_id    BIGINT NOT NULL,
    last_updated  BIGINT NOT NULL,
    content       TEXT NOT NULL,
    PRIMARY KEY (resource_type, id, version_id)
);
INSERT INTO fhir_history SELECT resource_type, id, version_id, last_updated, content FROM fhir_resources;
CREATE FUNCTION fhir_history_keep() RETURNS trigger AS $$
BEGIN
    INSERT INTO fhir_history VALUES (NEW.resource_type, NEW.id, NEW.version_id, NEW.last_updated, NEW.content)
        ON CONFLICT (resource_type, id, version_id) DO UPDATE SET last_updated = excluded.last_updated, content = excluded.content;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER fhir_history_on_insert AFTER INSERT ON fhir_resources FOR EACH ROW EXECUTE FUNCTION fhir_history_keep();
CREATE TRIGGER fhir_history_on_update AFTER UPDATE OF version_id ON fhir_resources FOR EACH ROW EXECUTE FUNCTION fhir_history_keep();

-- Search columns: ` system|code ` tokens of `code` and `category`, and the clinical time range.
ALTER TABLE fhir_resources ADD COLUMN codes TEXT;
ALTER TABLE fhir_resources ADD COLUMN categories TEXT;
ALTER TABLE fhir_resources ADD COLUMN date_start BIGINT;
ALTER TABLE fhir_resources ADD COLUMN date_end BIGINT;
CREATE INDEX fhir_resources_by_date ON fhir_resources (project_id, resource_type, patient_id, date_start);

-- What each processed webhook event wrote.
ALTER TABLE webhook_events ADD COLUMN synced_refs TEXT;
-- Events waiting for the sync stage that did not exist yet go through the queue now.
UPDATE webhook_events SET state = 'received' WHERE state = 'pending_sync';
INSERT INTO jobs (id, kind, project_id, endpoint_id, unique_key, payload, priority, due_at, created_at)
    SELECT 'event-' || id, 'webhook_event', project_id, endpoint_id, id, '{}', 0, next_attempt_at, received_at
    FROM webhook_events WHERE state = 'received';

-- Sync progress per connection (the state shown is derived from this, the jobs and the budgets).
CREATE TABLE sync_status (
    endpoint_id     TEXT PRIMARY KEY,
    project_id      TEXT NOT NULL REFERENCES projects(id),
    backfill_from   BIGINT,
    backfill_to     BIGINT,
    backfill_done   BIGINT NOT NULL DEFAULT 0,
    backfill_total  BIGINT,
    last_synced_at  BIGINT,
    last_error      TEXT,
    updated_at      BIGINT NOT NULL
);

-- Rate-limit windows per provider application (project + provider), shared by all instances.
CREATE TABLE rate_windows (
    project_id  TEXT NOT NULL REFERENCES projects(id),
    provider    TEXT NOT NULL,
    name        TEXT NOT NULL,
    lim         BIGINT NOT NULL,
    used        BIGINT NOT NULL,
    resets_at   BIGINT NOT NULL,
    length_ms   BIGINT NOT NULL,
    PRIMARY KEY (project_id, provider, name)
);
