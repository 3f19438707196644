-- Retention (`WEARLINK_RETENTION_DAYS`): the sweep finds finished rows by age through these, a
-- bounded batch at a time, instead of reading whole tables every hour.
CREATE INDEX webhook_deliveries_by_age ON webhook_deliveries (created_at);
CREATE INDEX outbound_events_by_age ON outbound_events (created_at);
CREATE INDEX webhook_events_by_age ON webhook_events (received_at);
