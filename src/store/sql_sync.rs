//! The sync stage's SQL, shared by both backends like `sql.rs` (one text, `$n` parameters): the
//! job queue, synced FHIR resources, sync progress and rate-limit windows.

/// Implements `JobStore`, `ResourceStore` and `SyncStore` for `$store` (see `impl_sql_store!`).
macro_rules! impl_sync_store {
    (
        store: $store:ty,
        db: $db:ty,
        row: $row:ty,
        begin_write: $begin_write:expr,
        lock_rows: $lock_rows:literal,
        skip_locked: $skip_locked:literal $(,)?
    ) => {
    fn job_from_row(row: &$row) -> StoreResult<$crate::store::sync::Job> {
        let payload: String = row.try_get("payload")?;
        Ok($crate::store::sync::Job {
            id: row.try_get("id")?,
            kind: row.try_get("kind")?,
            project_id: row.try_get("project_id")?,
            endpoint_id: row.try_get("endpoint_id")?,
            unique_key: row.try_get("unique_key")?,
            payload: serde_json::from_str(&payload).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            priority: row.try_get("priority")?,
            attempts: row.try_get("attempts")?,
            due_at: row.try_get("due_at")?,
            last_error: row.try_get("last_error")?,
            created_at: row.try_get("created_at")?,
        })
    }

    /// Inserts jobs inside `tx` (a unique key already queued is kept).
    async fn insert_jobs(
        tx: &mut sqlx::Transaction<'_, $db>,
        jobs: &[$crate::store::sync::NewJob],
    ) -> StoreResult<u64> {
        let mut new = 0;
        for chunk in jobs.chunks(100) {
            let sql = format!(
                "INSERT INTO jobs (id, kind, project_id, endpoint_id, unique_key, payload, priority, due_at, created_at)
                 VALUES {} ON CONFLICT (kind, unique_key) DO NOTHING",
                $crate::store::sql::value_rows(chunk.len(), 9, |p| format!("({})", p.join(", "))),
            );
            let mut query = sqlx::query(&sql);
            for j in chunk {
                query = query
                    .bind(&j.id)
                    .bind(&j.kind)
                    .bind(&j.project_id)
                    .bind(&j.endpoint_id)
                    .bind(&j.unique_key)
                    .bind(j.payload.to_string())
                    .bind(j.priority)
                    .bind(j.due_at)
                    .bind($crate::time::now_ms());
            }
            new += query.execute(&mut **tx).await?.rows_affected();
        }
        Ok(new)
    }

    /// Applies `outcome` to a job inside `tx`, only while `lease` holds it; false when it does not.
    async fn complete_job_in(
        tx: &mut sqlx::Transaction<'_, $db>,
        lease: &Lease,
        id: &str,
        outcome: &$crate::store::sync::JobOutcome,
    ) -> StoreResult<bool> {
        use $crate::store::sync::JobOutcome;
        let query = match outcome {
            JobOutcome::Done => sqlx::query("DELETE FROM jobs WHERE id = $1 AND lease_owner = $2").bind(id).bind(&lease.owner),
            JobOutcome::Retry { due_at, error } => sqlx::query(
                "UPDATE jobs SET attempts = attempts + 1, due_at = $3, last_error = $4, lease_owner = NULL, lease_until = NULL
                 WHERE id = $1 AND lease_owner = $2",
            )
            .bind(id)
            .bind(&lease.owner)
            .bind(*due_at)
            .bind(error),
            JobOutcome::Park { due_at, payload, note } => sqlx::query(
                "UPDATE jobs SET due_at = $3, payload = $4, last_error = $5, lease_owner = NULL, lease_until = NULL
                 WHERE id = $1 AND lease_owner = $2",
            )
            .bind(id)
            .bind(&lease.owner)
            .bind(*due_at)
            .bind(payload.to_string())
            .bind(note),
        };
        Ok(query.execute(&mut **tx).await?.rows_affected() == 1)
    }

    #[async_trait]
    impl $crate::store::sync::JobStore for $store {
        async fn enqueue_jobs(&self, jobs: &[$crate::store::sync::NewJob]) -> StoreResult<u64> {
            if jobs.is_empty() {
                return Ok(0);
            }
            let mut writer = self.writer().await?;
            let mut tx = $begin_write(&mut writer).await?;
            let new = insert_jobs(&mut tx, jobs).await?;
            tx.commit().await?;
            Ok(new)
        }

        async fn claim_jobs(&self, kinds: &[&str], lease: &Lease, limit: i64) -> StoreResult<Vec<$crate::store::sync::Job>> {
            if kinds.is_empty() {
                return Ok(Vec::new());
            }
            let kind_params: Vec<String> = (0..kinds.len()).map(|i| format!("${}", i + 5)).collect();
            let sql = format!(
                concat!(
                    "UPDATE jobs SET lease_owner = $1, lease_until = $2
                     WHERE id IN (SELECT id FROM jobs
                                  WHERE due_at <= $3 AND (lease_until IS NULL OR lease_until <= $3)
                                    -- `kind || ''`: not the (kind, unique_key) index, the claim's
                                    AND kind || '' IN ({})
                                  ORDER BY priority, due_at LIMIT $4",
                    $skip_locked,
                    ")
                     RETURNING *"
                ),
                kind_params.join(", ")
            );
            let mut query = sqlx::query(&sql).bind(&lease.owner).bind(lease.until).bind(lease.now).bind(limit);
            for kind in kinds {
                query = query.bind(*kind);
            }
            let rows = query.fetch_all(&mut *self.writer().await?).await?;
            let mut jobs: Vec<_> = rows.iter().map(job_from_row).collect::<StoreResult<_>>()?;
            jobs.sort_by_key(|j| (j.priority, j.due_at));
            Ok(jobs)
        }

        async fn complete_job(
            &self,
            lease: &Lease,
            id: &str,
            outcome: &$crate::store::sync::JobOutcome,
            events: &[$crate::store::outbound::OutboundEvent],
        ) -> StoreResult<bool> {
            let mut writer = self.writer().await?;
            let mut tx = $begin_write(&mut writer).await?;
            let held = complete_job_in(&mut tx, lease, id, outcome).await?;
            if held {
                for event in events {
                    emit_in(&mut tx, event, None).await?;
                }
            }
            tx.commit().await?;
            Ok(held)
        }

        async fn release_jobs(&self, instance_id: &str) -> StoreResult<u64> {
            // A claimer is `<instance id>/<uuid>`; the instance id is a UUID (no LIKE wildcards).
            let released = sqlx::query("UPDATE jobs SET lease_owner = NULL, lease_until = NULL WHERE lease_owner LIKE $1")
                .bind(format!("{instance_id}/%"))
                .execute(&mut *self.writer().await?)
                .await?
                .rows_affected();
            Ok(released)
        }

        async fn checkpoint_job(&self, lease: &Lease, id: &str, payload: &Value) -> StoreResult<bool> {
            let updated = sqlx::query("UPDATE jobs SET payload = $1, lease_until = $2 WHERE id = $3 AND lease_owner = $4")
                .bind(payload.to_string())
                .bind(lease.until)
                .bind(id)
                .bind(&lease.owner)
                .execute(&mut *self.writer().await?)
                .await?
                .rows_affected();
            Ok(updated == 1)
        }

        async fn cancel_jobs(&self, endpoint_id: &str) -> StoreResult<u64> {
            Ok(sqlx::query("DELETE FROM jobs WHERE endpoint_id = $1")
                .bind(endpoint_id)
                .execute(&mut *self.writer().await?)
                .await?
                .rows_affected())
        }

        async fn count_jobs(&self, project_id: &str) -> StoreResult<Vec<(String, String, i64)>> {
            Ok(sqlx::query_as(
                "SELECT endpoint_id, kind, COUNT(*) FROM jobs WHERE project_id = $1 AND endpoint_id IS NOT NULL
                 GROUP BY endpoint_id, kind",
            )
            .bind(project_id)
            .fetch_all(self.reader())
            .await?)
        }
    }

    /// The body without what the store sets, to compare content across versions.
    fn content_of(body: &Value) -> Value {
        let mut body = body.clone();
        if let Value::Object(map) = &mut body {
            map.remove("id");
            map.remove("meta");
        }
        body
    }

    #[async_trait]
    impl $crate::store::sync::ResourceStore for $store {
        async fn write_resources(
            &self,
            project_id: &str,
            writes: &[$crate::store::sync::ResourceWrite],
            now: i64,
            source: Option<&$crate::events::SyncSource>,
        ) -> StoreResult<Vec<($crate::store::sync::WriteOutcome, i64)>> {
            use $crate::store::sync::WriteOutcome;
            if writes.is_empty() {
                return Ok(Vec::new());
            }
            let mut writer = self.writer().await?;
            let mut tx = $begin_write(&mut writer).await?;
            let mut current: std::collections::HashMap<(String, String), (String, i64, String)> = Default::default();
            for chunk in writes.chunks(200) {
                // Locked in id order, so that two writers of overlapping sets cannot deadlock.
                let sql = format!(
                    concat!(
                        "SELECT resource_type, id, project_id, version_id, content FROM fhir_resources
                         WHERE (resource_type, id) IN ({}) ORDER BY resource_type, id",
                        $lock_rows
                    ),
                    $crate::store::sql::value_rows(chunk.len(), 2, |p| format!("({})", p.join(", "))),
                );
                let mut query = sqlx::query_as::<_, (String, String, String, i64, String)>(&sql);
                for w in chunk {
                    query = query.bind(&w.resource_type).bind(&w.id);
                }
                for (t, id, project, version, content) in query.fetch_all(&mut *tx).await? {
                    current.insert((t, id), (project, version, content));
                }
            }
            let mut outcomes = Vec::with_capacity(writes.len());
            let mut changed = Vec::new();
            for w in writes {
                let version = match current.get(&(w.resource_type.clone(), w.id.clone())) {
                    Some((project, _, _)) if project != project_id => {
                        return Err(StoreError::Corrupt(format!("{}/{} belongs to another project", w.resource_type, w.id)));
                    }
                    Some((_, version, content)) => {
                        let stored: Value =
                            serde_json::from_str(content).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                        if content_of(&stored) == content_of(&w.body) {
                            outcomes.push((WriteOutcome::Unchanged, *version));
                            continue;
                        }
                        outcomes.push((WriteOutcome::Updated, version + 1));
                        version + 1
                    }
                    None => {
                        outcomes.push((WriteOutcome::Created, 1));
                        1
                    }
                };
                changed.push((w, version));
            }
            for chunk in changed.chunks(100) {
                let sql = format!(
                    "INSERT INTO fhir_resources (resource_type, id, project_id, patient_id, version_id, last_updated,
                         content, codes, categories, date_start, date_end)
                     VALUES {}
                     ON CONFLICT (resource_type, id) DO UPDATE SET version_id = excluded.version_id,
                         last_updated = excluded.last_updated, content = excluded.content, codes = excluded.codes,
                         categories = excluded.categories, date_start = excluded.date_start, date_end = excluded.date_end",
                    $crate::store::sql::value_rows(chunk.len(), 11, |p| format!("({})", p.join(", "))),
                );
                let mut query = sqlx::query(&sql);
                for (w, version) in chunk {
                    let body = with_meta(w.body.clone(), &w.id, *version, now);
                    query = query
                        .bind(&w.resource_type)
                        .bind(&w.id)
                        .bind(project_id)
                        .bind(&w.patient_id)
                        .bind(*version)
                        .bind(now)
                        .bind(body.to_string())
                        .bind(&w.index.codes)
                        .bind(&w.index.categories)
                        .bind(w.index.date_start)
                        .bind(w.index.date_end);
                }
                query.execute(&mut *tx).await?;
            }
            // Each new version also goes to the project's FHIR server, when it writes there.
            let versions: Vec<(&str, &str, i64)> =
                changed.iter().map(|(w, v)| (w.resource_type.as_str(), w.id.as_str(), *v)).collect();
            outbox_in(&mut tx, project_id, &versions, now).await?;
            if let (Some(source), false) = (source, changed.is_empty()) {
                let references: Vec<String> = changed.iter().map(|(w, _)| format!("{}/{}", w.resource_type, w.id)).collect();
                emit_in(&mut tx, &source.data_synced(&references, now), None).await?;
            }
            tx.commit().await?;
            Ok(outcomes)
        }

        async fn search_resources(
            &self,
            project_id: &str,
            q: &$crate::store::sync::ResourceQuery,
        ) -> StoreResult<(i64, Vec<StoredResource>)> {
            use $crate::store::sync::DateBound;
            // Parameters: texts first ($1..), then numbers; the WHERE clause names them by number.
            let mut texts: Vec<String> = vec![project_id.into(), q.resource_type.clone(), q.patient_id.clone()];
            let mut clauses = vec!["project_id = $1".to_string(), "resource_type = $2".into(), "patient_id = $3".into()];
            for (column, params) in [("codes", &q.codes), ("categories", &q.categories)] {
                for alternatives in params {
                    let mut any = Vec::new();
                    for t in alternatives {
                        texts.push($crate::store::sql_sync::token_pattern(t));
                        any.push(format!("{column} LIKE ${} ESCAPE '\\'", texts.len()));
                    }
                    clauses.push(format!("({})", any.join(" OR ")));
                }
            }
            let mut numbers = Vec::new();
            for bound in &q.dates {
                let n = texts.len() + numbers.len() + 1;
                match bound {
                    DateBound::EndsAtOrAfter(at) => {
                        numbers.push(*at);
                        clauses.push(format!("date_end >= ${n}"));
                    }
                    DateBound::StartsBefore(at) => {
                        numbers.push(*at);
                        clauses.push(format!("date_start < ${n}"));
                    }
                }
            }
            let filter = clauses.join(" AND ");
            let count_sql = format!("SELECT COUNT(*) FROM fhir_resources WHERE {filter}");
            let mut count = sqlx::query_as::<_, (i64,)>(&count_sql);
            for t in &texts {
                count = count.bind(t);
            }
            for n in &numbers {
                count = count.bind(n);
            }
            let (total,) = count.fetch_one(self.reader()).await?;
            let order = if q.newest_first { "date_start DESC, id" } else { "date_start, id" };
            let next = texts.len() + numbers.len() + 1;
            let page_sql = format!(
                "SELECT id, version_id, last_updated, content FROM fhir_resources WHERE {filter}
                 ORDER BY {order} LIMIT ${next} OFFSET ${}",
                next + 1
            );
            let mut page = sqlx::query(&page_sql);
            for t in &texts {
                page = page.bind(t);
            }
            for n in &numbers {
                page = page.bind(n);
            }
            let rows = page.bind(q.count).bind(q.offset).fetch_all(self.reader()).await?;
            Ok((total, rows.iter().map(resource_from_row).collect::<StoreResult<_>>()?))
        }

        async fn read_version(
            &self,
            project_id: &str,
            resource_type: &str,
            id: &str,
            version_id: i64,
        ) -> StoreResult<Option<StoredResource>> {
            sqlx::query(
                "SELECT h.id, h.version_id, h.last_updated, h.content FROM fhir_history h
                 JOIN fhir_resources r ON r.resource_type = h.resource_type AND r.id = h.id
                 WHERE h.resource_type = $1 AND h.id = $2 AND h.version_id = $3 AND r.project_id = $4",
            )
            .bind(resource_type)
            .bind(id)
            .bind(version_id)
            .bind(project_id)
            .fetch_optional(self.reader())
            .await?
            .as_ref()
            .map(resource_from_row)
            .transpose()
        }
    }

    #[async_trait]
    impl $crate::store::sync::SyncStore for $store {
        async fn update_sync_status(
            &self,
            project_id: &str,
            endpoint_id: &str,
            u: &$crate::store::sync::SyncUpdate,
            now: i64,
        ) -> StoreResult<()> {
            let (from, to) = u.backfill_range.unzip();
            sqlx::query(
                "INSERT INTO sync_status (endpoint_id, project_id, backfill_from, backfill_to, backfill_done,
                     backfill_total, last_synced_at, last_error, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (endpoint_id) DO UPDATE SET
                     backfill_from = COALESCE(excluded.backfill_from, sync_status.backfill_from),
                     backfill_to = COALESCE(excluded.backfill_to, sync_status.backfill_to),
                     backfill_done = CASE WHEN excluded.backfill_from IS NULL
                         THEN sync_status.backfill_done + excluded.backfill_done ELSE excluded.backfill_done END,
                     backfill_total = CASE WHEN excluded.backfill_from IS NULL
                         THEN COALESCE(excluded.backfill_total, sync_status.backfill_total) ELSE excluded.backfill_total END,
                     last_synced_at = COALESCE(excluded.last_synced_at, sync_status.last_synced_at),
                     last_error = CASE WHEN $10 = 1 THEN excluded.last_error ELSE sync_status.last_error END,
                     updated_at = excluded.updated_at",
            )
            .bind(endpoint_id)
            .bind(project_id)
            .bind(from)
            .bind(to)
            .bind(u.backfill_done_add)
            .bind(u.backfill_total)
            .bind(u.synced_at)
            .bind(u.error.clone().flatten())
            .bind(now)
            .bind(i64::from(u.error.is_some()))
            .execute(&mut *self.writer().await?)
            .await?;
            Ok(())
        }

        async fn list_sync_status(&self, project_id: &str) -> StoreResult<Vec<$crate::store::sync::SyncStatus>> {
            let rows = sqlx::query("SELECT * FROM sync_status WHERE project_id = $1")
                .bind(project_id)
                .fetch_all(self.reader())
                .await?;
            rows.iter()
                .map(|row| {
                    Ok($crate::store::sync::SyncStatus {
                        endpoint_id: row.try_get("endpoint_id")?,
                        backfill_from: row.try_get("backfill_from")?,
                        backfill_to: row.try_get("backfill_to")?,
                        backfill_done: row.try_get("backfill_done")?,
                        backfill_total: row.try_get("backfill_total")?,
                        last_synced_at: row.try_get("last_synced_at")?,
                        last_error: row.try_get("last_error")?,
                    })
                })
                .collect()
        }

        async fn reserve_call(
            &self,
            project_id: &str,
            provider: &str,
            share_percent: i64,
            now: i64,
        ) -> StoreResult<Result<(), i64>> {
            // Nothing known yet (no answer seen, or a provider without limits): nothing to count.
            let (known,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM rate_windows WHERE project_id = $1 AND provider = $2")
                    .bind(project_id)
                    .bind(provider)
                    .fetch_one(self.reader())
                    .await?;
            if known == 0 {
                return Ok(Ok(()));
            }
            let mut writer = self.writer().await?;
            let mut tx = $begin_write(&mut writer).await?;
            let windows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(concat!(
                "SELECT name, lim, used, resets_at, length_ms FROM rate_windows
                 WHERE project_id = $1 AND provider = $2 ORDER BY name",
                $lock_rows
            ))
            .bind(project_id)
            .bind(provider)
            .fetch_all(&mut *tx)
            .await?;
            let mut blocked_until = None;
            let mut next = Vec::with_capacity(windows.len());
            for (name, limit, used, resets_at, length) in windows {
                // A window that ended starts over; its end moves on by whole windows.
                let (used, resets_at) = if resets_at <= now {
                    let length = length.max(1);
                    (0, resets_at + ((now - resets_at) / length + 1) * length)
                } else {
                    (used, resets_at)
                };
                if (used + 1) * 100 > limit * share_percent {
                    blocked_until = blocked_until.max(Some(resets_at));
                }
                next.push((name, used + 1, resets_at));
            }
            if let Some(until) = blocked_until {
                return Ok(Err(until));
            }
            for (name, used, resets_at) in next {
                sqlx::query(
                    "UPDATE rate_windows SET used = $1, resets_at = $2 WHERE project_id = $3 AND provider = $4 AND name = $5",
                )
                .bind(used)
                .bind(resets_at)
                .bind(project_id)
                .bind(provider)
                .bind(&name)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(Ok(()))
        }

        async fn record_rate_windows(
            &self,
            project_id: &str,
            provider: &str,
            windows: &[$crate::store::sync::RateWindow],
        ) -> StoreResult<()> {
            if windows.is_empty() {
                return Ok(());
            }
            // In name order, as `reserve_call` locks them: two writers never wait for each other.
            let mut windows: Vec<_> = windows.iter().collect();
            windows.sort_by(|a, b| a.name.cmp(&b.name));
            let mut writer = self.writer().await?;
            let mut tx = $begin_write(&mut writer).await?;
            for w in windows {
                // The provider's count is the truth; within the same window, calls reserved but not
                // answered yet may not be in it, so the larger count wins.
                sqlx::query(
                    "INSERT INTO rate_windows (project_id, provider, name, lim, used, resets_at, length_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (project_id, provider, name) DO UPDATE SET lim = excluded.lim,
                         length_ms = excluded.length_ms,
                         used = CASE WHEN rate_windows.resets_at > $8 AND rate_windows.resets_at >= excluded.resets_at - 1000
                                     AND rate_windows.used > excluded.used THEN rate_windows.used ELSE excluded.used END,
                         resets_at = excluded.resets_at",
                )
                .bind(project_id)
                .bind(provider)
                .bind(&w.name)
                .bind(w.limit)
                .bind(w.used)
                .bind(w.resets_at)
                .bind(w.length_ms)
                .bind($crate::time::now_ms())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        }

        async fn rate_limited(&self, project_id: &str, share_percent: i64, now: i64) -> StoreResult<Vec<(String, i64)>> {
            Ok(sqlx::query_as(
                "SELECT provider, MAX(resets_at) FROM rate_windows
                 WHERE project_id = $1 AND resets_at > $2 AND used * 100 >= lim * $3 GROUP BY provider",
            )
            .bind(project_id)
            .bind(now)
            .bind(share_percent)
            .fetch_all(self.reader())
            .await?)
        }
    }
    };
}

pub(crate) use impl_sync_store;

/// The `LIKE` pattern of a token among ` system|code ` entries: `system|code`, or `|code` for any system.
pub(super) fn token_pattern(t: &super::sync::TokenParam) -> String {
    let escape = |s: &str| s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    match &t.system {
        Some(system) => format!("% {}|{} %", escape(system), escape(&t.code)),
        None => format!("%|{} %", escape(&t.code)),
    }
}
