-- Projects, their API tokens (hashes only), settings and sealed secrets.
CREATE TABLE projects (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    token_hash  TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects(id),
    role        TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    created_at  BIGINT NOT NULL
);

CREATE TABLE project_settings (
    project_id  TEXT NOT NULL REFERENCES projects(id),
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (project_id, key)
);

CREATE TABLE project_secrets (
    project_id  TEXT NOT NULL REFERENCES projects(id),
    key         TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    ciphertext  BYTEA NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (project_id, key)
);

-- FHIR resources, one row per resource (current version), scoped to a project.
CREATE TABLE fhir_resources (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    project_id    TEXT NOT NULL REFERENCES projects(id),
    patient_id    TEXT,
    version_id    BIGINT NOT NULL,
    last_updated  BIGINT NOT NULL,
    content       TEXT NOT NULL,
    PRIMARY KEY (resource_type, id)
);
CREATE INDEX fhir_resources_by_patient ON fhir_resources (project_id, resource_type, patient_id);

-- Pending connects. Only the hash of the state is kept.
CREATE TABLE oauth_states (
    state_hash    TEXT PRIMARY KEY,
    project_id    TEXT NOT NULL REFERENCES projects(id),
    patient_id    TEXT NOT NULL,
    provider      TEXT NOT NULL,
    redirect_uri  TEXT,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);
CREATE INDEX oauth_states_by_expiry ON oauth_states (expires_at);

-- The private side of each Endpoint: sealed tokens and lifecycle fields.
CREATE TABLE connections (
    endpoint_id       TEXT PRIMARY KEY,
    project_id        TEXT NOT NULL REFERENCES projects(id),
    patient_id        TEXT NOT NULL,
    provider          TEXT NOT NULL,
    remote_user_id    TEXT NOT NULL,
    scopes            TEXT NOT NULL,
    status            TEXT NOT NULL,
    token_key_id      TEXT,
    token_ciphertext  BYTEA,
    expires_at        BIGINT,
    connected_at      BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    UNIQUE (project_id, patient_id, provider)
);
