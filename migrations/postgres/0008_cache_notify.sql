-- Every committed change to what instances cache (API tokens, settings, secrets) is announced on
-- the `wearlink_cache` channel, so each instance forgets its copy at once (src/cache.rs). Triggers
-- rather than application code: a change made with the CLI or straight in the database is
-- announced too, and NOTIFY inside the writing transaction is delivered only if it commits.
-- Payloads name what changed, never a value: `token:<first 16 hex digits of its hash>`,
-- `settings:<project id>`, `secrets:<project id>`.

CREATE FUNCTION wearlink_announce_token_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('wearlink_cache', 'token:' || left(OLD.token_hash, 16));
    RETURN NULL;
END
$$;

-- A new token needs no announcement: unknown tokens are never cached.
CREATE TRIGGER api_tokens_announce AFTER UPDATE OR DELETE ON api_tokens
    FOR EACH ROW EXECUTE FUNCTION wearlink_announce_token_change();

-- TG_ARGV[0]: what the table is to the cache (`settings` or `secrets`).
CREATE FUNCTION wearlink_announce_project_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_notify('wearlink_cache', TG_ARGV[0] || ':' || OLD.project_id);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM pg_notify('wearlink_cache', TG_ARGV[0] || ':' || NEW.project_id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER project_settings_announce AFTER INSERT OR UPDATE OR DELETE ON project_settings
    FOR EACH ROW EXECUTE FUNCTION wearlink_announce_project_change('settings');

CREATE TRIGGER project_secrets_announce AFTER INSERT OR UPDATE OR DELETE ON project_secrets
    FOR EACH ROW EXECUTE FUNCTION wearlink_announce_project_change('secrets');
