-- The provider region (or environment) a connection lives in, chosen at connect (Dexcom: us, eu,
-- jp, sandbox): its calls go to that region's hosts. NULL: the provider's only hosts.
ALTER TABLE oauth_states ADD COLUMN region TEXT;
ALTER TABLE connections ADD COLUMN region TEXT;
