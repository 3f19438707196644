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
        endpoint_from_columns(row, "")
    }

    /// An endpoint from columns named `<prefix><column>` (a join names its endpoint's `e_…`).
    fn endpoint_from_columns(row: &$row, prefix: &str) -> StoreResult<$crate::store::outbound::EndpointRecord> {
        let col = |name: &str| format!("{prefix}{name}");
        let events: Option<String> = row.try_get(col("events").as_str())?;
        let previous = match (
            row.try_get::<Option<String>, _>(col("previous_secret_key_id").as_str())?,
            row.try_get::<Option<Vec<u8>>, _>(col("previous_secret_ciphertext").as_str())?,
            row.try_get::<Option<i64>, _>(col("previous_secret_until").as_str())?,
        ) {
            (Some(key_id), Some(blob), Some(until)) => Some((Sealed { key_id, blob }, until)),
            _ => None,
        };
        Ok($crate::store::outbound::EndpointRecord {
            id: row.try_get(col("id").as_str())?,
            project_id: row.try_get(col("project_id").as_str())?,
            url: row.try_get(col("url").as_str())?,
            description: row.try_get(col("description").as_str())?,
            events: events.map(|e| serde_json::from_str(&e)).transpose().map_err(|e| StoreError::Corrupt(e.to_string()))?,
            enabled: row.try_get::<i64, _>(col("enabled").as_str())? != 0,
            disabled_reason: row.try_get(col("disabled_reason").as_str())?,
            secret: Sealed { key_id: row.try_get(col("secret_key_id").as_str())?, blob: row.try_get(col("secret_ciphertext").as_str())? },
            previous_secret: previous,
            failing_since: row.try_get(col("failing_since").as_str())?,
            created_at: row.try_get(col("created_at").as_str())?,
            updated_at: row.try_get(col("updated_at").as_str())?,
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
            // One read: the delivery, its event and its endpoint (whose columns are `e_…`).
            let Some(row) = sqlx::query(
                "SELECT d.*, v.event_type, v.body, e.id AS e_id, e.project_id AS e_project_id, e.url AS e_url,
                     e.description AS e_description, e.events AS e_events, e.enabled AS e_enabled,
                     e.disabled_reason AS e_disabled_reason, e.secret_key_id AS e_secret_key_id,
                     e.secret_ciphertext AS e_secret_ciphertext, e.previous_secret_key_id AS e_previous_secret_key_id,
                     e.previous_secret_ciphertext AS e_previous_secret_ciphertext,
                     e.previous_secret_until AS e_previous_secret_until, e.failing_since AS e_failing_since,
                     e.created_at AS e_created_at, e.updated_at AS e_updated_at
                 FROM webhook_deliveries d JOIN outbound_events v ON v.id = d.event_id
                 JOIN webhook_endpoints e ON e.id = d.endpoint_id
                 WHERE d.id = $1",
            )
            .bind(id)
            .fetch_optional(self.reader())
            .await?
            else {
                return Ok(None);
            };
            Ok(Some((delivery_from_row(&row)?, row.try_get("body")?, endpoint_from_columns(&row, "e_")?)))
        }

        async fn record_attempts(
            &self,
            attempts: &[$crate::store::outbound::AttemptWrite],
        ) -> StoreResult<Vec<bool>> {
            use $crate::store::sync::JobOutcome;
            if attempts.is_empty() {
                return Ok(Vec::new());
            }
            let mut writer = self.writer().await?;
            let mut tx = $begin_write(&mut writer).await?;
            let mut held = vec![false; attempts.len()];
            // Finished jobs leave the queue in one statement, each fenced on its own lease's owner.
            let done: Vec<usize> = (0..attempts.len()).filter(|&i| matches!(attempts[i].result.job, JobOutcome::Done)).collect();
            for chunk in done.chunks(200) {
                let sql = format!(
                    "DELETE FROM jobs WHERE (id, lease_owner) IN (VALUES {}) RETURNING id",
                    $crate::store::sql::value_rows(chunk.len(), 2, |p| format!("({})", p.join(", "))),
                );
                let mut query = sqlx::query_as::<_, (String,)>(&sql);
                for &i in chunk {
                    query = query.bind(&attempts[i].job_id).bind(&attempts[i].lease_owner);
                }
                let deleted: std::collections::HashSet<String> =
                    query.fetch_all(&mut *tx).await?.into_iter().map(|(id,)| id).collect();
                for &i in chunk {
                    held[i] = deleted.contains(&attempts[i].job_id);
                }
            }
            // Retried ones (failures: rare) one by one.
            for (i, a) in attempts.iter().enumerate() {
                if !matches!(a.result.job, JobOutcome::Done) {
                    let lease = Lease { owner: a.lease_owner.clone(), now: a.result.at, until: a.result.at };
                    held[i] = complete_job_in(&mut tx, &lease, &a.job_id, &a.result.job).await?;
                }
            }
            let recorded: Vec<&$crate::store::outbound::AttemptWrite> =
                attempts.iter().zip(&held).filter(|(_, held)| **held).map(|(a, _)| a).collect();
            for chunk in recorded.chunks(100) {
                let sql = format!(
                    "WITH v (id, state, status, error, next_attempt_at, at) AS (VALUES {})
                     UPDATE webhook_deliveries SET state = v.state, attempts = attempts + 1, last_status = v.status,
                         last_error = v.error, next_attempt_at = v.next_attempt_at,
                         delivered_at = CASE WHEN v.state = 'delivered' THEN v.at ELSE webhook_deliveries.delivered_at END
                     FROM v WHERE webhook_deliveries.id = v.id",
                    $crate::store::sql::value_rows(chunk.len(), 6, |p| format!("({})", p.join(", "))),
                );
                let mut query = sqlx::query(&sql);
                for a in chunk {
                    let r = &a.result;
                    query = query.bind(&a.delivery_id).bind(&r.state).bind(r.status).bind(&r.error).bind(r.next_attempt_at).bind(r.at);
                }
                query.execute(&mut *tx).await?;
            }
            // The endpoints' failing state, written only when it changes: no row every delivery to
            // one endpoint would wait on. All succeeded (the usual case): one statement.
            if recorded.iter().all(|a| !a.result.endpoint_failed && a.result.disable.is_none()) {
                let mut endpoints: Vec<&str> = recorded.iter().map(|a| a.endpoint_id.as_str()).collect();
                endpoints.sort_unstable();
                endpoints.dedup();
                for chunk in endpoints.chunks(100) {
                    let params: Vec<String> = (1..=chunk.len()).map(|n| format!("${n}")).collect();
                    let sql = format!(
                        "UPDATE webhook_endpoints SET failing_since = NULL WHERE failing_since IS NOT NULL AND id IN ({})",
                        params.join(", ")
                    );
                    let mut query = sqlx::query(&sql);
                    for id in chunk {
                        query = query.bind(*id);
                    }
                    query.execute(&mut *tx).await?;
                }
            } else {
                for a in &recorded {
                    let r = &a.result;
                    sqlx::query(
                        "UPDATE webhook_endpoints SET
                             failing_since = CASE WHEN $1 = 1 THEN COALESCE(failing_since, $2) ELSE NULL END,
                             enabled = CASE WHEN CAST($3 AS TEXT) IS NULL THEN enabled ELSE 0 END,
                             disabled_reason = COALESCE(CAST($3 AS TEXT), disabled_reason)
                         WHERE id = $4
                           AND (CASE WHEN $1 = 1 THEN failing_since IS NULL ELSE failing_since IS NOT NULL END
                                OR CAST($3 AS TEXT) IS NOT NULL)",
                    )
                    .bind(i64::from(r.endpoint_failed))
                    .bind(r.at)
                    .bind(&r.disable)
                    .bind(&a.endpoint_id)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
            Ok(held)
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
