//! The retention sweep's SQL, shared by both backends like `sql.rs`: each statement deletes one
//! bounded batch, so a backlog never holds SQLite's one writer for long.

/// Implements `RetentionStore` for `$store` (see `impl_sql_store!`).
macro_rules! impl_retention_store {
    (store: $store:ty, skip_locked: $skip_locked:literal $(,)?) => {
        #[async_trait]
        impl $crate::store::retention::RetentionStore for $store {
            async fn prune_finished(&self, cutoff: i64, limit: u32) -> StoreResult<u64> {
                const BATCHES: [&str; 3] = [
                    concat!(
                        "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries
                             WHERE created_at < $1 AND state IN ('delivered', 'failed') LIMIT $2",
                        $skip_locked,
                        ")"
                    ),
                    concat!(
                        "DELETE FROM outbound_events WHERE id IN (SELECT id FROM outbound_events v
                             WHERE created_at < $1
                               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = v.id) LIMIT $2",
                        $skip_locked,
                        ")"
                    ),
                    concat!(
                        "DELETE FROM webhook_events WHERE id IN (SELECT id FROM webhook_events w
                             WHERE received_at < $1 AND state IN ('synced', 'ignored', 'dead', 'done')
                               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.kind = 'webhook_event' AND j.unique_key = w.id)
                             LIMIT $2",
                        $skip_locked,
                        ")"
                    ),
                ];
                let mut deleted = 0;
                for sql in BATCHES {
                    deleted += sqlx::query(sql)
                        .bind(cutoff)
                        .bind(i64::from(limit))
                        .execute(&mut *self.writer().await?)
                        .await?
                        .rows_affected();
                }
                Ok(deleted)
            }
        }
    };
}

pub(crate) use impl_retention_store;
