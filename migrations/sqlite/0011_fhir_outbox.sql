-- Writing into the project's own FHIR server (issue 20): the outbox of resource versions still to
-- be written there, written in the transaction of the change (like outbound events), drained in
-- order per project by one job at a time; the switches between the embedded store and the server;
-- the server's ids of what was written, to rewrite references. The mode itself is the reserved
-- setting FHIR_STORE (cached and announced like every setting; the settings API refuses it).
CREATE TABLE fhir_outbox (
    -- FIFO per project.
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id       TEXT NOT NULL REFERENCES projects(id),
    resource_type    TEXT NOT NULL,
    resource_id      TEXT NOT NULL,
    version_id       INTEGER NOT NULL,
    -- pending or dead; a written row is deleted.
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    last_error       TEXT,
    -- The server's OperationOutcome (JSON) that made it a dead letter.
    outcome          TEXT,
    switch_id        TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX fhir_outbox_by_project ON fhir_outbox (project_id, state, seq);
CREATE INDEX fhir_outbox_by_switch ON fhir_outbox (switch_id);
-- The drain settles a resource's rows (`seq <= x`) and a later write clears its dead letters:
-- without this, each is a scan of the project's whole backlog (a switch's copy: quadratic).
CREATE INDEX fhir_outbox_by_resource ON fhir_outbox (project_id, resource_type, resource_id, seq);

CREATE TABLE fhir_store_switches (
    id           TEXT PRIMARY KEY,
    project_id   TEXT NOT NULL REFERENCES projects(id),
    -- server or embedded
    target       TEXT NOT NULL,
    -- Resources enqueued by the switch.
    total        INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    -- Set once none of its rows is pending.
    finished_at  INTEGER
);
CREATE INDEX fhir_store_switches_by_project ON fhir_store_switches (project_id, started_at);

CREATE TABLE fhir_server_ids (
    project_id     TEXT NOT NULL REFERENCES projects(id),
    -- The server's base URL: ids learned from one server mean nothing on another.
    server         TEXT NOT NULL,
    resource_type  TEXT NOT NULL,
    resource_id    TEXT NOT NULL,
    server_id      TEXT NOT NULL,
    PRIMARY KEY (project_id, server, resource_type, resource_id)
);
