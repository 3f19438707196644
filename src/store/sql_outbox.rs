//! The FHIR outbox's SQL, shared by both backends like `sql.rs` (one text, `$n` parameters).

/// Implements `OutboxStore` for `$store`, and `outbox_in`, which the resource writes call inside
/// their transactions.
macro_rules! impl_outbox_store {
    (
        store: $store:ty,
        db: $db:ty,
        row: $row:ty,
        begin_write: $begin_write:expr,
        lock_rows: $lock_rows:literal,
        lock_share: $lock_share:literal $(,)?
    ) => {
    /// Puts these new versions `(type, id, version)` in the project's outbox when the project
    /// writes into its FHIR server, and makes sure its drain job is queued; inside the writing
    /// transaction, so a version is never stored without its row. The project row is key-share
    /// locked (PostgreSQL; the lock a foreign-key check of these inserts takes anyway), so a
    /// switch, which takes it exclusively, sees each write before or after it: never a version
    /// written in embedded mode after the switch's copy was taken.
    async fn outbox_in(
        tx: &mut sqlx::Transaction<'_, $db>,
        project_id: &str,
        items: &[(&str, &str, i64)],
        now: i64,
    ) -> StoreResult<()> {
        if items.is_empty() {
            return Ok(());
        }
        // Two statements: the lock first, then the mode. Under READ COMMITTED a statement reads
        // from the snapshot it started with, so one that waited for a switch's lock would still
        // see the mode from before the switch, and queue nothing (review finding).
        sqlx::query(concat!("SELECT p.id FROM projects p WHERE p.id = $1", $lock_share))
            .bind(project_id)
            .fetch_optional(&mut **tx)
            .await?;
        let mode: Option<(String,)> =
            sqlx::query_as("SELECT value FROM project_settings WHERE project_id = $1 AND key = 'FHIR_STORE'")
                .bind(project_id)
                .fetch_optional(&mut **tx)
                .await?;
        let server = mode.is_some_and(|(v,)| v.trim_matches('"') == $crate::store::outbox::MODE_SERVER);
        if !server {
            return Ok(());
        }
        for chunk in items.chunks(100) {
            // Parameters: $1 project, $2 now, then three per row.
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| format!("($1, ${}, ${}, ${}, 'pending', 0, $2, $2, $2)", 3 + 3 * i, 4 + 3 * i, 5 + 3 * i))
                .collect();
            let sql = format!(
                "INSERT INTO fhir_outbox (project_id, resource_type, resource_id, version_id, state, attempts,
                     next_attempt_at, created_at, updated_at)
                 VALUES {}",
                rows.join(", ")
            );
            let mut query = sqlx::query(&sql).bind(project_id).bind(now);
            for (t, id, version) in chunk {
                query = query.bind(*t).bind(*id).bind(*version);
            }
            query.execute(&mut **tx).await?;
        }
        insert_jobs(tx, &[$crate::store::outbox::drain_job(project_id, now)]).await?;
        Ok(())
    }

    fn outbox_from_row(row: &$row) -> StoreResult<$crate::store::outbox::OutboxRow> {
        let outcome: Option<String> = row.try_get("outcome")?;
        Ok($crate::store::outbox::OutboxRow {
            seq: row.try_get("seq")?,
            project_id: row.try_get("project_id")?,
            resource_type: row.try_get("resource_type")?,
            resource_id: row.try_get("resource_id")?,
            version_id: row.try_get("version_id")?,
            state: row.try_get("state")?,
            attempts: row.try_get("attempts")?,
            next_attempt_at: row.try_get("next_attempt_at")?,
            last_error: row.try_get("last_error")?,
            outcome: outcome.and_then(|o| serde_json::from_str(&o).ok()),
            switch_id: row.try_get("switch_id")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }

    /// The project's latest switch, for `switch_with_counts`.
    const LATEST_SWITCH: &str = "SELECT id, project_id, target, total, started_at, finished_at FROM fhir_store_switches
         WHERE project_id = $1 ORDER BY started_at DESC, id DESC LIMIT 1";

    /// A switch's record with its counts.
    async fn switch_with_counts(
        executor: &mut <$db as sqlx::Database>::Connection,
        row: Option<(String, String, String, i64, i64, Option<i64>)>,
    ) -> StoreResult<Option<$crate::store::outbox::SwitchRecord>> {
        let Some((id, project_id, target, total, started_at, finished_at)) = row else { return Ok(None) };
        let counts: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM fhir_outbox WHERE switch_id = $1 GROUP BY state")
                .bind(&id)
                .fetch_all(&mut *executor)
                .await?;
        let count = |s: &str| counts.iter().find(|(state, _)| state == s).map_or(0, |(_, n)| *n);
        Ok(Some($crate::store::outbox::SwitchRecord {
            pending: count($crate::store::outbox::PENDING),
            dead: count($crate::store::outbox::DEAD),
            id,
            project_id,
            target,
            total,
            started_at,
            finished_at,
        }))
    }

    /// Marks the project's switches with nothing pending any more as finished.
    async fn finish_switches(tx: &mut sqlx::Transaction<'_, $db>, project_id: &str, now: i64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE fhir_store_switches SET finished_at = $2
             WHERE project_id = $1 AND finished_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM fhir_outbox o WHERE o.switch_id = fhir_store_switches.id AND o.state = 'pending')",
        )
        .bind(project_id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    #[async_trait]
    impl $crate::store::outbox::OutboxStore for $store {
        async fn due_outbox(&self, project_id: &str, now: i64, limit: i64) -> StoreResult<Vec<$crate::store::outbox::OutboxRow>> {
            let rows = sqlx::query(
                "SELECT * FROM fhir_outbox WHERE project_id = $1 AND state = 'pending' AND next_attempt_at <= $2
                 ORDER BY seq LIMIT $3",
            )
            .bind(project_id)
            .bind(now)
            .bind(limit)
            .fetch_all(self.reader())
            .await?;
            rows.iter().map(outbox_from_row).collect()
        }

        async fn current_resources(
            &self,
            project_id: &str,
            refs: &[(String, String)],
        ) -> StoreResult<Vec<$crate::store::outbox::CurrentResource>> {
            let mut found = Vec::new();
            for chunk in refs.chunks(200) {
                let sql = format!(
                    "SELECT resource_type, id, version_id, content FROM fhir_resources
                     WHERE project_id = $1 AND (resource_type, id) IN ({})",
                    (0..chunk.len()).map(|i| format!("(${}, ${})", 2 + 2 * i, 3 + 2 * i)).collect::<Vec<_>>().join(", ")
                );
                let mut query = sqlx::query_as::<_, (String, String, i64, String)>(&sql).bind(project_id);
                for (t, id) in chunk {
                    query = query.bind(t).bind(id);
                }
                for (resource_type, id, version_id, content) in query.fetch_all(self.reader()).await? {
                    let body = serde_json::from_str(&content).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    found.push($crate::store::outbox::CurrentResource { resource_type, id, version_id, body });
                }
            }
            Ok(found)
        }

        async fn server_ids(
            &self,
            project_id: &str,
            server: &str,
            refs: &[(String, String)],
        ) -> StoreResult<std::collections::HashMap<(String, String), String>> {
            let mut found = std::collections::HashMap::new();
            for chunk in refs.chunks(200) {
                let sql = format!(
                    "SELECT resource_type, resource_id, server_id FROM fhir_server_ids
                     WHERE project_id = $1 AND server = $2 AND (resource_type, resource_id) IN ({})",
                    (0..chunk.len()).map(|i| format!("(${}, ${})", 3 + 2 * i, 4 + 2 * i)).collect::<Vec<_>>().join(", ")
                );
                let mut query = sqlx::query_as::<_, (String, String, String)>(&sql).bind(project_id).bind(server);
                for (t, id) in chunk {
                    query = query.bind(t).bind(id);
                }
                for (t, id, server_id) in query.fetch_all(self.reader()).await? {
                    found.insert((t, id), server_id);
                }
            }
            Ok(found)
        }

        async fn record_outbox(
            &self,
            lease: &Lease,
            job_id: &str,
            project_id: &str,
            server: &str,
            results: &$crate::store::outbox::DrainResults,
            now: i64,
        ) -> StoreResult<bool> {
            let mut writer = self.writer().await?;
            let mut tx = $begin_write(&mut writer).await?;
            let held = sqlx::query("UPDATE jobs SET lease_until = $1 WHERE id = $2 AND lease_owner = $3")
                .bind(lease.until)
                .bind(job_id)
                .bind(&lease.owner)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if !held {
                return Ok(false);
            }
            for (t, id, seq) in &results.written {
                sqlx::query(
                    "DELETE FROM fhir_outbox WHERE project_id = $1 AND resource_type = $2 AND resource_id = $3
                       AND seq <= $4",
                )
                .bind(project_id)
                .bind(t)
                .bind(id)
                .bind(*seq)
                .execute(&mut *tx)
                .await?;
            }
            for (t, id, server_id) in &results.server_ids {
                sqlx::query(
                    "INSERT INTO fhir_server_ids (project_id, server, resource_type, resource_id, server_id)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (project_id, server, resource_type, resource_id) DO UPDATE SET server_id = excluded.server_id",
                )
                .bind(project_id)
                .bind(server)
                .bind(t)
                .bind(id)
                .bind(server_id)
                .execute(&mut *tx)
                .await?;
            }
            for (t, id, seq, next, error) in &results.retry {
                sqlx::query(
                    "UPDATE fhir_outbox SET attempts = attempts + 1, next_attempt_at = $5, last_error = $6, updated_at = $7
                     WHERE project_id = $1 AND resource_type = $2 AND resource_id = $3 AND seq <= $4 AND state = 'pending'",
                )
                .bind(project_id)
                .bind(t)
                .bind(id)
                .bind(*seq)
                .bind(*next)
                .bind(error)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            for (t, id, seq, error, outcome) in &results.dead {
                sqlx::query(
                    "UPDATE fhir_outbox SET state = 'dead', attempts = attempts + 1, last_error = $5, outcome = $6,
                         updated_at = $7
                     WHERE project_id = $1 AND resource_type = $2 AND resource_id = $3 AND seq <= $4 AND state = 'pending'",
                )
                .bind(project_id)
                .bind(t)
                .bind(id)
                .bind(*seq)
                .bind(error)
                .bind(outcome.as_ref().map(|o| o.to_string()))
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            finish_switches(&mut tx, project_id, now).await?;
            tx.commit().await?;
            Ok(true)
        }

        async fn finish_drain(
            &self,
            lease: &Lease,
            job_id: &str,
            project_id: &str,
            now: i64,
            not_before: Option<i64>,
        ) -> StoreResult<bool> {
            use $crate::store::sync::JobOutcome;
            let mut writer = self.writer().await?;
            let mut tx = $begin_write(&mut writer).await?;
            // Waits for writers still adding rows (they hold the project row shared).
            sqlx::query(concat!("SELECT id FROM projects WHERE id = $1", $lock_rows))
                .bind(project_id)
                .fetch_optional(&mut *tx)
                .await?;
            let (next,): (Option<i64>,) =
                sqlx::query_as("SELECT MIN(next_attempt_at) FROM fhir_outbox WHERE project_id = $1 AND state = 'pending'")
                    .bind(project_id)
                    .fetch_one(&mut *tx)
                    .await?;
            let outcome = match next {
                None => JobOutcome::Done,
                Some(at) => JobOutcome::Park {
                    due_at: at.max(now).max(not_before.unwrap_or(0)),
                    payload: serde_json::json!({}),
                    note: None,
                },
            };
            let held = complete_job_in(&mut tx, lease, job_id, &outcome).await?;
            finish_switches(&mut tx, project_id, now).await?;
            tx.commit().await?;
            Ok(held)
        }

        async fn list_outbox(
            &self,
            project_id: &str,
            filter: &$crate::store::outbox::OutboxFilter,
        ) -> StoreResult<Vec<$crate::store::outbox::OutboxRow>> {
            let rows = sqlx::query(
                "SELECT * FROM fhir_outbox WHERE project_id = $1 AND state = $2 AND seq > $3 ORDER BY seq LIMIT $4",
            )
            .bind(project_id)
            .bind(&filter.state)
            .bind(filter.after.unwrap_or(0))
            .bind(filter.limit)
            .fetch_all(self.reader())
            .await?;
            rows.iter().map(outbox_from_row).collect()
        }

        async fn replay_outbox(&self, project_id: &str, state: &str, seq: Option<i64>, now: i64) -> StoreResult<u64> {
            let mut writer = self.writer().await?;
            let mut tx = $begin_write(&mut writer).await?;
            let replayed = sqlx::query(
                "UPDATE fhir_outbox SET state = 'pending', attempts = 0, next_attempt_at = $3, last_error = NULL,
                     outcome = NULL, updated_at = $3
                 WHERE project_id = $1 AND state = $2 AND ($4 < 0 OR seq = $4)",
            )
            .bind(project_id)
            .bind(state)
            .bind(now)
            .bind(seq.unwrap_or(-1))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if replayed > 0 {
                sqlx::query("UPDATE fhir_store_switches SET finished_at = NULL WHERE id IN
                             (SELECT switch_id FROM fhir_outbox WHERE project_id = $1 AND state = 'pending')")
                    .bind(project_id)
                    .execute(&mut *tx)
                    .await?;
                insert_jobs(&mut tx, &[$crate::store::outbox::drain_job(project_id, now)]).await?;
                // A parked drain runs now.
                sqlx::query("UPDATE jobs SET due_at = $1 WHERE kind = $2 AND unique_key = $3 AND due_at > $1")
                    .bind(now)
                    .bind($crate::store::outbox::DRAIN_KIND)
                    .bind(format!("fhir-outbox:{project_id}"))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(replayed)
        }

        async fn outbox_depth(&self) -> StoreResult<$crate::store::outbox::OutboxDepth> {
            Ok(sqlx::query_as("SELECT state, COUNT(*), MIN(created_at) FROM fhir_outbox GROUP BY state")
                .fetch_all(self.reader())
                .await?)
        }

        async fn switch_fhir_store(
            &self,
            project_id: &str,
            target: &str,
            switch_id: &str,
            now: i64,
        ) -> StoreResult<$crate::store::outbox::SwitchOutcome> {
            use $crate::store::outbox::{SwitchOutcome, MODE_EMBEDDED, MODE_SERVER};
            let mut writer = self.writer().await?;
            let mut tx = $begin_write(&mut writer).await?;
            // Exclusive: writers in flight finish first (their rows are then in the copy or the
            // outbox), later ones see the new mode.
            sqlx::query(concat!("SELECT id FROM projects WHERE id = $1", $lock_rows))
                .bind(project_id)
                .fetch_optional(&mut *tx)
                .await?;
            let mode: Option<(String,)> =
                sqlx::query_as("SELECT value FROM project_settings WHERE project_id = $1 AND key = 'FHIR_STORE'")
                    .bind(project_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let current = mode.map(|(v,)| v.trim_matches('"').to_string());
            let current = current.as_deref().unwrap_or(MODE_EMBEDDED);
            let latest = sqlx::query_as(LATEST_SWITCH).bind(project_id).fetch_optional(&mut *tx).await?;
            if let Some(latest) = switch_with_counts(&mut *tx, latest).await? {
                if latest.pending > 0 {
                    return Ok(SwitchOutcome::Busy(latest));
                }
            }
            if current == target {
                return Ok(SwitchOutcome::Unchanged);
            }
            sqlx::query(
                "INSERT INTO project_settings (project_id, key, value, updated_at) VALUES ($1, 'FHIR_STORE', $2, $3)
                 ON CONFLICT (project_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            )
            .bind(project_id)
            .bind(serde_json::Value::String(target.into()).to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let total = if target == MODE_SERVER {
                // Referenced before referencing: Endpoints, then Devices and Procedures, then
                // the rest (in the order they were written: a summary after its readings).
                sqlx::query(
                    "INSERT INTO fhir_outbox (project_id, resource_type, resource_id, version_id, state, attempts,
                         next_attempt_at, switch_id, created_at, updated_at)
                     SELECT project_id, resource_type, id, version_id, 'pending', 0, $2, $3, $2, $2
                     FROM fhir_resources WHERE project_id = $1 AND resource_type <> 'Patient'
                     ORDER BY CASE resource_type WHEN 'Endpoint' THEN 0 WHEN 'Device' THEN 1 WHEN 'Procedure' THEN 1
                              ELSE 2 END, last_updated, id",
                )
                .bind(project_id)
                .bind(now)
                .bind(switch_id)
                .execute(&mut *tx)
                .await?
                .rows_affected() as i64
            } else {
                0
            };
            sqlx::query(
                "INSERT INTO fhir_store_switches (id, project_id, target, total, started_at, finished_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(switch_id)
            .bind(project_id)
            .bind(target)
            .bind(total)
            .bind(now)
            .bind(if total == 0 { Some(now) } else { None })
            .execute(&mut *tx)
            .await?;
            if total > 0 {
                insert_jobs(&mut tx, &[$crate::store::outbox::drain_job(project_id, now)]).await?;
            }
            let row = Some((switch_id.to_string(), project_id.to_string(), target.to_string(), total, now, None));
            let record = switch_with_counts(&mut *tx, row).await?.expect("just made");
            tx.commit().await?;
            Ok(SwitchOutcome::Started($crate::store::outbox::SwitchRecord {
                finished_at: (total == 0).then_some(now),
                ..record
            }))
        }

        async fn latest_switch(&self, project_id: &str) -> StoreResult<Option<$crate::store::outbox::SwitchRecord>> {
            let mut reader = self.reader().acquire().await?;
            let latest = sqlx::query_as(LATEST_SWITCH).bind(project_id).fetch_optional(&mut *reader).await?;
            switch_with_counts(&mut *reader, latest).await
        }
    }
    };
}

pub(crate) use impl_outbox_store;
