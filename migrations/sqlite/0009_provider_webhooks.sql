-- A provider's recorded webhook subscription is kept under one name for every provider.
UPDATE project_settings SET key = 'WEARABLE_STRAVA_WEBHOOK_SUBSCRIPTION' WHERE key = 'STRAVA_PUSH_SUBSCRIPTION_ID';
-- The PKCE verifier of a connect state (RFC 7636), sealed to the state like the session token.
ALTER TABLE oauth_states ADD COLUMN verifier_key_id TEXT;
ALTER TABLE oauth_states ADD COLUMN code_verifier BLOB;
