//! Outbound events' SQL, shared by both backends like `sql.rs`. `emit_in` is what every change
//! that has an event calls inside its own transaction: the event, its deliveries and their jobs
//! commit with the change or not at all.

/// Implements `OutboundStore` for `$store` (see `impl_sql_store!`).
macro_rules! impl_outbound_store {
    (
        store: $store:ty,
        db: $db:ty,
        row: $row:ty,
        begin_write: $begin_write:expr,
        lock_rows: $lock_rows:literal,
        skip_locked: $skip_locked:literal $(,)?
    ) => {
    /// Stores `event` and queues its deliveries (each enabled endpoint of the project subscribed
    /// to its type, or `only_endpoint`) and their jobs, inside `tx`.
    async fn emit_in(
        tx: &mut sqlx::Transaction<'_, $db>,
        event: &$crate::store::outbound::OutboundEvent,
        only_endpoint: Option<&str>,
    ) -> StoreResult<()> {
        // A project without endpoints has no one to tell: nothing is stored.
        let listening = sqlx::query("SELECT 1 FROM webhook_endpoints WHERE project_id = $1 AND enabled = 1 LIMIT 1")
            .bind(&event.project_id)
            .fetch_optional(&mut **tx)
            .await?;
        if listening.is_none() {
            return Ok(());
        }
        sqlx::query("INSERT INTO outbound_events (id, project_id, event_type, body, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&event.id)
            .bind(&event.project_id)
            .bind(&event.event_type)
            .bind(&event.body)
            .bind(event.created_at)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, event_id, endpoint_id, project_id, state, attempts, next_attempt_at, created_at)
             SELECT CAST($1 AS TEXT) || ':' || e.id, CAST($1 AS TEXT), e.id, e.project_id, 'pending', 0,
                    CAST($3 AS BIGINT), CAST($3 AS BIGINT)
             FROM webhook_endpoints e
             WHERE e.project_id = $2 AND e.enabled = 1
               AND (CAST($4 AS TEXT) IS NULL OR e.id = CAST($4 AS TEXT))
               AND (CAST($4 AS TEXT) IS NOT NULL OR e.events IS NULL OR e.events LIKE CAST($5 AS TEXT))",
        )
        .bind(&event.id)
        .bind(&event.project_id)
        .bind(event.created_at)
        .bind(only_endpoint)
        .bind(format!("%\"{}\"%", event.event_type))
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO jobs (id, kind, project_id, endpoint_id, unique_key, payload, priority, due_at, created_at)
             SELECT 'delivery-' || d.id, 'delivery', d.project_id, NULL, d.id, '{}', 0, d.created_at, d.created_at
             FROM webhook_deliveries d WHERE d.event_id = $1",
        )
        .bind(&event.id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    fn outbound_endpoint_from_row(row: &$row) -> StoreResult<$crate::store::outbound::EndpointRecord> {
        let events: Option<String> = row.try_get("events")?;
        let previous = match (
            row.try_get::<Option<String>, _>("previous_secret_key_id")?,
            row.try_get::<Option<Vec<u8>>, _>("previous_secret_ciphertext")?,
            row.try_get::<Option<i64>, _>("previous_secret_until")?,
        ) {
            (Some(key_id), Some(blob), Some(until)) => Some((Sealed { key_id, blob }, until)),
            _ => None,
        };
        Ok($crate::store::outbound::EndpointRecord {
            id: row.try_get("id")?,
            project_id: row.try_get("project_id")?,
            url: row.try_get("url")?,
            description: row.try_get("description")?,
            events: events.map(|e| serde_json::from_str(&e)).transpose().map_err(|e| StoreError::Corrupt(e.to_string()))?,
            enabled: row.try_get::<i64, _>("enabled")? != 0,
            disabled_reason: row.try_get("disabled_reason")?,
            secret: Sealed { key_id: row.try_get("secret_key_id")?, blob: row.try_get("secret_ciphertext")? },
            previous_secret: previous,
            failing_since: row.try_get("failing_since")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }

    fn delivery_from_row(row: &$row) -> StoreResult<$crate::store::outbound::DeliveryRecord> {
        Ok($crate::store::outbound::DeliveryRecord {
            id: row.try_get("id")?,
            event_id: row.try_get("event_id")?,
            event_type: row.try_get("event_type")?,
            endpoint_id: row.try_get("endpoint_id")?,
            project_id: row.try_get("project_id")?,
            state: row.try_get("state")?,
            attempts: row.try_get("attempts")?,
            last_status: row.try_get("last_status")?,
            last_error: row.try_get("last_error")?,
            next_attempt_at: row.try_get("next_attempt_at")?,
            created_at: row.try_get("created_at")?,
            delivered_at: row.try_get("delivered_at")?,
        })
    }

    fn events_text(events: &Option<Vec<String>>) -> Option<String> {
        events.as_ref().map(|e| serde_json::to_string(e).expect("strings serialize"))
    }

    #[async_trait]
    impl $crate::store::outbound::OutboundStore for $store {
        async fn create_endpoint(&self, e: &$crate::store::outbound::EndpointRecord) -> StoreResult<()> {
            sqlx::query(
                "INSERT INTO webhook_endpoints (id, project_id, url, description, events, enabled, disabled_reason,
                     secret_key_id, secret_ciphertext, previous_secret_key_id, previous_secret_ciphertext,
                     previous_secret_until, failing_since, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            )
            .bind(&e.id)
            .bind(&e.project_id)
            .bind(&e.url)
            .bind(&e.description)
            .bind(events_text(&e.events))
            .bind(i64::from(e.enabled))
            .bind(&e.disabled_reason)
            .bind(&e.secret.key_id)
            .bind(&e.secret.blob)
            .bind(e.previous_secret.as_ref().map(|(s, _)| s.key_id.clone()))
            .bind(e.previous_secret.as_ref().map(|(s, _)| s.blob.clone()))
            .bind(e.previous_secret.as_ref().map(|(_, until)| *until))
            .bind(e.failing_since)
            .bind(e.created_at)
            .bind(e.updated_at)
            .execute(&mut *self.writer().await?)
            .await?;
            Ok(())
        }

        async fn list_endpoints(&self, project_id: &str) -> StoreResult<Vec<$crate::store::outbound::EndpointRecord>> {
            let rows = sqlx::query("SELECT * FROM webhook_endpoints WHERE project_id = $1 ORDER BY created_at, id")
                .bind(project_id)
                .fetch_all(self.reader())
                .await?;
            rows.iter().map(outbound_endpoint_from_row).collect()
        }

        async fn find_endpoint(&self, project_id: &str, id: &str) -> StoreResult<Option<$crate::store::outbound::EndpointRecord>> {
            sqlx::query("SELECT * FROM webhook_endpoints WHERE project_id = $1 AND id = $2")
                .bind(project_id)
                .bind(id)
                .fetch_optional(self.reader())
                .await?
                .as_ref()
                .map(outbound_endpoint_from_row)
                .transpose()
        }

        async fn update_endpoint(&self, e: &$crate::store::outbound::EndpointRecord) -> StoreResult<bool> {
            let updated = sqlx::query(
                "UPDATE webhook_endpoints SET url = $1, description = $2, events = $3, enabled = $4,
                     disabled_reason = $5, secret_key_id = $6, secret_ciphertext = $7, previous_secret_key_id = $8,
                     previous_secret_ciphertext = $9, previous_secret_until = $10, failing_since = $11, updated_at = $12
                 WHERE id = $13 AND project_id = $14",
            )
            .bind(&e.url)
            .bind(&e.description)
            .bind(events_text(&e.events))
            .bind(i64::from(e.enabled))
            .bind(&e.disabled_reason)
            .bind(&e.secret.key_id)
            .bind(&e.secret.blob)
            .bind(e.previous_secret.as_ref().map(|(s, _)| s.key_id.clone()))
            .bind(e.previous_secret.as_ref().map(|(s, _)| s.blob.clone()))
            .bind(e.previous_secret.as_ref().map(|(_, until)| *until))
            .bind(e.failing_since)
            .bind(e.updated_at)
            .bind(&e.id)
            .bind(&e.project_id)
            .execute(&mut *self.writer().await?)
            .await?
            .rows_affected();
            Ok(updated == 1)
        }

        async fn delete_endpoint(&self, project_id: &str, id: &str) -> StoreResult<bool> {
            let mut writer = self.writer().await?;
            let mut tx = $begin_write(&mut writer).await?;
            let deleted = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1 AND project_id = $2")
                .bind(id)
                .bind(project_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if deleted == 1 {
                sqlx::query(
                    "DELETE FROM jobs WHERE kind = 'delivery'
                       AND unique_key IN (SELECT id FROM webhook_deliveries WHERE endpoint_id = $1 AND state = 'pending')",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE webhook_deliveries SET state = 'failed', last_error = 'endpoint deleted', next_attempt_at = NULL
                     WHERE endpoint_id = $1 AND state = 'pending'",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(deleted == 1)
        }

        async fn emit(&self, event: &$crate::store::outbound::OutboundEvent, only_endpoint: Option<&str>) -> StoreResult<()> {
            let mut writer = self.writer().await?;
            let mut tx = $begin_write(&mut writer).await?;
            emit_in(&mut tx, event, only_endpoint).await?;
            tx.commit().await?;
            Ok(())
        }

        async fn load_delivery(
            &self,
            id: &str,
        ) -> StoreResult<Option<($crate::store::outbound::DeliveryRecord, String, $crate::store::outbound::EndpointRecord)>> {
            let Some(row) = sqlx::query(
                "SELECT d.*, v.event_type, v.body FROM webhook_deliveries d JOIN outbound_events v ON v.id = d.event_id
                 WHERE d.id = $1",
            )
            .bind(id)
            .fetch_optional(self.reader())
            .await?
            else {
                return Ok(None);
            };
            let delivery = delivery_from_row(&row)?;
            let body: String = row.try_get("body")?;
            let endpoint = sqlx::query("SELECT * FROM webhook_endpoints WHERE id = $1")
                .bind(&delivery.endpoint_id)
                .fetch_optional(self.reader())
                .await?
                .as_ref()
                .map(outbound_endpoint_from_row)
                .transpose()?;
            Ok(endpoint.map(|endpoint| (delivery, body, endpoint)))
        }

        async fn record_attempt(
            &self,
            lease: &Lease,
            job_id: &str,
            delivery: &$crate::store::outbound::DeliveryRecord,
            r: &$crate::store::outbound::AttemptResult,
        ) -> StoreResult<bool> {
            let mut writer = self.writer().await?;
            let mut tx = $begin_write(&mut writer).await?;
            if !complete_job_in(&mut tx, lease, job_id, &r.job).await? {
                return Ok(false);
            }
            sqlx::query(
                "UPDATE webhook_deliveries SET state = $1, attempts = attempts + 1, last_status = $2, last_error = $3,
                     next_attempt_at = $4, delivered_at = CASE WHEN $1 = 'delivered' THEN $5 ELSE delivered_at END
                 WHERE id = $6",
            )
            .bind(&r.state)
            .bind(r.status)
            .bind(&r.error)
            .bind(r.next_attempt_at)
            .bind(r.at)
            .bind(&delivery.id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE webhook_endpoints SET
                     failing_since = CASE WHEN $1 = 1 THEN COALESCE(failing_since, $2) ELSE NULL END,
                     enabled = CASE WHEN $3 IS NULL THEN enabled ELSE 0 END,
                     disabled_reason = COALESCE($3, disabled_reason)
                 WHERE id = $4",
            )
            .bind(i64::from(r.endpoint_failed))
            .bind(r.at)
            .bind(&r.disable)
            .bind(&delivery.endpoint_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        }

        async fn list_deliveries(
            &self,
            project_id: &str,
            endpoint_id: &str,
            state: Option<&str>,
        ) -> StoreResult<Vec<$crate::store::outbound::DeliveryRecord>> {
            let rows = sqlx::query(
                "SELECT d.*, v.event_type FROM webhook_deliveries d JOIN outbound_events v ON v.id = d.event_id
                 WHERE d.project_id = $1 AND d.endpoint_id = $2 AND (CAST($3 AS TEXT) IS NULL OR d.state = CAST($3 AS TEXT))
                 ORDER BY d.created_at DESC, d.id LIMIT 1000",
            )
            .bind(project_id)
            .bind(endpoint_id)
            .bind(state)
            .fetch_all(self.reader())
            .await?;
            rows.iter().map(delivery_from_row).collect()
        }

        async fn retry_delivery(&self, project_id: &str, id: &str, now: i64) -> StoreResult<bool> {
            let mut writer = self.writer().await?;
            let mut tx = $begin_write(&mut writer).await?;
            let updated = sqlx::query(
                "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = $1 WHERE id = $2 AND project_id = $3",
            )
            .bind(now)
            .bind(id)
            .bind(project_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 1 {
                let job = $crate::store::sync::NewJob {
                    id: format!("delivery-{id}-{now}"),
                    kind: $crate::sync::DELIVERY.into(),
                    project_id: project_id.into(),
                    endpoint_id: None,
                    unique_key: Some(id.into()),
                    payload: serde_json::json!({}),
                    priority: 0,
                    due_at: now,
                };
                insert_jobs(&mut tx, &[job]).await?;
            }
            tx.commit().await?;
            Ok(updated == 1)
        }
    }
    };
}

pub(crate) use impl_outbound_store;
