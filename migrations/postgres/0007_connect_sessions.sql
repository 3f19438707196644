-- Hosted connect page sessions. Only the hash of the session token is kept; a deleted session
-- keeps its row (ended_at) so its link answers 410 until it is swept.
CREATE TABLE connect_sessions (
    id            TEXT PRIMARY KEY,
    token_hash    TEXT NOT NULL UNIQUE,
    project_id    TEXT NOT NULL REFERENCES projects(id),
    patient_id    TEXT NOT NULL,
    redirect_uri  TEXT,
    providers     TEXT,
    locale        TEXT,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    ended_at      BIGINT
);
CREATE INDEX connect_sessions_by_expiry ON connect_sessions (expires_at);

-- A connect started from a session page: the session, and its token sealed to this state, so
-- the callback can bring the patient back to the page. Gone with the state.
ALTER TABLE oauth_states ADD COLUMN session_id TEXT;
ALTER TABLE oauth_states ADD COLUMN session_key_id TEXT;
ALTER TABLE oauth_states ADD COLUMN session_token BYTEA;
