//! The SQL both backends share. sqlx binds `$1`-style parameters on SQLite and PostgreSQL alike, so
//! one text serves both; a backend file supplies its connection and row types, where reads and
//! writes run, how a writing transaction begins, and how rows are locked for update. A macro
//! rather than generics: sqlx's generic executor bounds would drown every query in trait bounds.

/// Implements the four store traits for `$store`, which provides `reader()` (a pool for
/// statements that only read) and `writer().await?` (a guard holding the connection that writes).
macro_rules! impl_sql_store {
    (
        store: $store:ty,
        db: $db:ty,
        row: $row:ty,
        begin_write: $begin_write:expr,
        lock_rows: $lock_rows:literal,
        skip_locked: $skip_locked:literal $(,)?
    ) => {
    fn resource_from_row(row: &$row) -> StoreResult<StoredResource> {
        let content: String = row.try_get("content")?;
        Ok(StoredResource {
            id: row.try_get("id")?,
            version_id: row.try_get("version_id")?,
            last_updated: row.try_get("last_updated")?,
            body: serde_json::from_str(&content).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        })
    }

    fn state_from_row(row: &$row) -> StoreResult<OAuthStateRecord> {
        Ok(OAuthStateRecord {
            state_hash: row.try_get("state_hash")?,
            project_id: row.try_get("project_id")?,
            patient_id: row.try_get("patient_id")?,
            provider: row.try_get("provider")?,
            redirect_uri: row.try_get("redirect_uri")?,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
            session: match (
                row.try_get::<Option<String>, _>("session_id")?,
                row.try_get::<Option<String>, _>("session_key_id")?,
                row.try_get::<Option<Vec<u8>>, _>("session_token")?,
            ) {
                (Some(session_id), Some(key_id), Some(blob)) => {
                    Some($crate::store::StateSession { session_id, token: Sealed { key_id, blob } })
                }
                _ => None,
            },
            code_verifier: match (
                row.try_get::<Option<String>, _>("verifier_key_id")?,
                row.try_get::<Option<Vec<u8>>, _>("code_verifier")?,
            ) {
                (Some(key_id), Some(blob)) => Some(Sealed { key_id, blob }),
                _ => None,
            },
            region: row.try_get("region")?,
        })
    }

    fn connection_from_row(row: &$row) -> StoreResult<ConnectionRecord> {
        let scopes: String = row.try_get("scopes")?;
        Ok(ConnectionRecord {
            endpoint_id: row.try_get("endpoint_id")?,
            project_id: row.try_get("project_id")?,
            patient_id: row.try_get("patient_id")?,
            provider: row.try_get("provider")?,
            remote_user_id: row.try_get("remote_user_id")?,
            scopes: serde_json::from_str(&scopes).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            status: row.try_get("status")?,
            tokens: match (row.try_get::<Option<String>, _>("token_key_id")?, row.try_get::<Option<Vec<u8>>, _>("token_ciphertext")?) {
                (Some(key_id), Some(blob)) => Some(Sealed { key_id, blob }),
                _ => None,
            },
            has_refresh_token: row.try_get::<i64, _>("has_refresh_token")? != 0,
            expires_at: row.try_get("expires_at")?,
            connected_at: row.try_get("connected_at")?,
            updated_at: row.try_get("updated_at")?,
            last_refreshed_at: row.try_get("last_refreshed_at")?,
            last_error: row.try_get("last_error")?,
            refresh_failures: row.try_get("refresh_failures")?,
            next_attempt_at: row.try_get("next_attempt_at")?,
            region: row.try_get("region")?,
        })
    }

    fn revocation_from_row(row: &$row) -> StoreResult<PendingRevocation> {
        Ok(PendingRevocation {
            id: row.try_get("id")?,
            project_id: row.try_get("project_id")?,
            endpoint_id: row.try_get("endpoint_id")?,
            provider: row.try_get("provider")?,
            remote_user_id: row.try_get("remote_user_id")?,
            token: Sealed { key_id: row.try_get("token_key_id")?, blob: row.try_get("token_ciphertext")? },
            attempts: row.try_get("attempts")?,
            next_attempt_at: row.try_get("next_attempt_at")?,
            last_error: row.try_get("last_error")?,
            created_at: row.try_get("created_at")?,
        })
    }

    fn event_from_row(row: &$row) -> StoreResult<WebhookEvent> {
        Ok(WebhookEvent {
            id: row.try_get("id")?,
            project_id: row.try_get("project_id")?,
            provider: row.try_get("provider")?,
            dedup_key: row.try_get("dedup_key")?,
            event_type: row.try_get("event_type")?,
            remote_user_id: row.try_get("remote_user_id")?,
            endpoint_id: row.try_get("endpoint_id")?,
            patient_id: row.try_get("patient_id")?,
            payload: row.try_get("payload")?,
            state: row.try_get("state")?,
            attempts: row.try_get("attempts")?,
            next_attempt_at: row.try_get("next_attempt_at")?,
            last_error: row.try_get("last_error")?,
            received_at: row.try_get("received_at")?,
            processed_at: row.try_get("processed_at")?,
            synced_refs: match row.try_get::<Option<String>, _>("synced_refs")? {
                Some(refs) => Some(serde_json::from_str(&refs).map_err(|e| StoreError::Corrupt(e.to_string()))?),
                None => None,
            },
        })
    }

    /// Writes `body` as the next version of an existing Endpoint, inside `tx`.
    async fn write_endpoint_version(
        tx: &mut sqlx::Transaction<'_, $db>,
        endpoint_id: &str,
        body: Value,
        now: i64,
    ) -> StoreResult<StoredResource> {
        let (version, project_id): (i64, String) = sqlx::query_as(concat!(
            "SELECT version_id, project_id FROM fhir_resources WHERE resource_type = 'Endpoint' AND id = $1",
            $lock_rows
        ))
        .bind(endpoint_id)
        .fetch_one(&mut **tx)
        .await?;
        let version = version + 1;
        let body = with_meta(body, endpoint_id, version, now);
        sqlx::query(
            "UPDATE fhir_resources SET version_id = $1, last_updated = $2, content = $3
             WHERE resource_type = 'Endpoint' AND id = $4",
        )
        .bind(version)
        .bind(now)
        .bind(body.to_string())
        .bind(endpoint_id)
        .execute(&mut **tx)
        .await?;
        outbox_in(tx, &project_id, &[("Endpoint", endpoint_id, version)], now).await?;
        Ok(StoredResource { id: endpoint_id.into(), version_id: version, last_updated: now, body })
    }

    /// The patient a resource belongs to, for `?patient=` searches.
    fn patient_of(resource_type: &str, id: &str, body: &Value) -> Option<String> {
        if resource_type == "Patient" {
            return Some(id.to_string());
        }
        crate::fhir::patient_reference(body)
    }

    #[async_trait]
    impl $crate::store::ProjectStore for $store {
        async fn create_project(&self, id: &str, name: &str, now: i64) -> StoreResult<()> {
            sqlx::query("INSERT INTO projects (id, name, created_at) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(name)
                .bind(now)
                .execute(&mut *self.writer().await?)
                .await?;
            Ok(())
        }

        async fn project_exists(&self, id: &str) -> StoreResult<bool> {
            Ok(sqlx::query("SELECT 1 FROM projects WHERE id = $1").bind(id).fetch_optional(self.reader()).await?.is_some())
        }

        async fn insert_api_token(&self, token: &ApiTokenRecord) -> StoreResult<()> {
            sqlx::query("INSERT INTO api_tokens (token_hash, project_id, role, created_at) VALUES ($1, $2, $3, $4)")
                .bind(&token.token_hash)
                .bind(&token.project_id)
                .bind(token.role.as_str())
                .bind(token.created_at)
                .execute(&mut *self.writer().await?)
                .await?;
            Ok(())
        }

        async fn find_api_token(&self, token_hash: &str) -> StoreResult<Option<ApiTokenRecord>> {
            let row = sqlx::query("SELECT token_hash, project_id, role, created_at FROM api_tokens WHERE token_hash = $1")
                .bind(token_hash)
                .fetch_optional(self.reader())
                .await?;
            row.map(|row| {
                let role: String = row.try_get("role")?;
                Ok(ApiTokenRecord {
                    token_hash: row.try_get("token_hash")?,
                    project_id: row.try_get("project_id")?,
                    role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role}")))?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .transpose()
        }

        async fn delete_api_token(&self, token_hash: &str) -> StoreResult<bool> {
            let deleted = sqlx::query("DELETE FROM api_tokens WHERE token_hash = $1")
                .bind(token_hash)
                .execute(&mut *self.writer().await?)
                .await?
                .rows_affected();
            Ok(deleted == 1)
        }

        async fn list_settings(&self, project_id: &str) -> StoreResult<Vec<(String, Value)>> {
            let rows = sqlx::query("SELECT key, value FROM project_settings WHERE project_id = $1 ORDER BY key")
                .bind(project_id)
                .fetch_all(self.reader())
                .await?;
            rows.iter()
                .map(|row| {
                    let value: String = row.try_get("value")?;
                    Ok((row.try_get("key")?, serde_json::from_str(&value).map_err(|e| StoreError::Corrupt(e.to_string()))?))
                })
                .collect()
        }

        async fn list_setting_values(&self, key: &str) -> StoreResult<Vec<(String, Value)>> {
            let rows = sqlx::query("SELECT project_id, value FROM project_settings WHERE key = $1 ORDER BY project_id")
                .bind(key)
                .fetch_all(self.reader())
                .await?;
            rows.iter()
                .map(|row| {
                    let value: String = row.try_get("value")?;
                    let value = serde_json::from_str(&value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    Ok((row.try_get("project_id")?, value))
                })
                .collect()
        }

        async fn put_setting(&self, project_id: &str, key: &str, value: &Value, now: i64) -> StoreResult<()> {
            sqlx::query(
                "INSERT INTO project_settings (project_id, key, value, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (project_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            )
            .bind(project_id)
            .bind(key)
            .bind(value.to_string())
            .bind(now)
            .execute(&mut *self.writer().await?)
            .await?;
            Ok(())
        }

        async fn put_secret(&self, project_id: &str, key: &str, sealed: &Sealed, now: i64) -> StoreResult<()> {
            sqlx::query(
                "INSERT INTO project_secrets (project_id, key, key_id, ciphertext, updated_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (project_id, key) DO UPDATE
                 SET key_id = excluded.key_id, ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
            )
            .bind(project_id)
            .bind(key)
            .bind(&sealed.key_id)
            .bind(&sealed.blob)
            .bind(now)
            .execute(&mut *self.writer().await?)
            .await?;
            Ok(())
        }

        async fn list_secrets(&self, project_id: &str) -> StoreResult<Vec<SecretRecord>> {
            let rows = sqlx::query(
                "SELECT key, key_id, ciphertext, updated_at FROM project_secrets WHERE project_id = $1 ORDER BY key",
            )
            .bind(project_id)
            .fetch_all(self.reader())
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(SecretRecord {
                        key: row.try_get("key")?,
                        sealed: Sealed { key_id: row.try_get("key_id")?, blob: row.try_get("ciphertext")? },
                        updated_at: row.try_get("updated_at")?,
                    })
                })
                .collect()
        }

        async fn delete_secrets(&self, project_id: &str, keys: &[String]) -> StoreResult<u64> {
            let mut writer = self.writer().await?;
            let mut tx = $begin_write(&mut writer).await?;
            let mut deleted = 0;
            for key in keys {
                deleted += sqlx::query("DELETE FROM project_secrets WHERE project_id = $1 AND key = $2")
                    .bind(project_id)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            tx.commit().await?;
            Ok(deleted)
        }
    }

    #[async_trait]
    impl $crate::store::FhirStore for $store {
        async fn create_resource(
            &self,
            project_id: &str,
            resource_type: &str,
            id: &str,
            body: Value,
            now: i64,
        ) -> StoreResult<StoredResource> {
            let body = with_meta(body, id, 1, now);
            sqlx::query(
                "INSERT INTO fhir_resources (resource_type, id, project_id, patient_id, version_id, last_updated, content)
                 VALUES ($1, $2, $3, $4, 1, $5, $6)",
            )
            .bind(resource_type)
            .bind(id)
            .bind(project_id)
            .bind(patient_of(resource_type, id, &body))
            .bind(now)
            .bind(body.to_string())
            .execute(&mut *self.writer().await?)
            .await?;
            Ok(StoredResource { id: id.into(), version_id: 1, last_updated: now, body })
        }

        async fn read_resource(
            &self,
            project_id: &str,
            resource_type: &str,
            id: &str,
        ) -> StoreResult<Option<StoredResource>> {
            sqlx::query(
                "SELECT id, version_id, last_updated, content FROM fhir_resources
                 WHERE resource_type = $1 AND id = $2 AND project_id = $3",
            )
            .bind(resource_type)
            .bind(id)
            .bind(project_id)
            .fetch_optional(self.reader())
            .await?
            .as_ref()
            .map(resource_from_row)
            .transpose()
        }
    }

    #[async_trait]
    impl $crate::store::StateStore for $store {
        async fn insert_state(&self, state: &OAuthStateRecord) -> StoreResult<()> {
            let session = state.session.as_ref();
            sqlx::query(
                "INSERT INTO oauth_states (state_hash, project_id, patient_id, provider, redirect_uri, created_at, expires_at,
                                           session_id, session_key_id, session_token, verifier_key_id, code_verifier, region)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            )
            .bind(&state.state_hash)
            .bind(&state.project_id)
            .bind(&state.patient_id)
            .bind(&state.provider)
            .bind(&state.redirect_uri)
            .bind(state.created_at)
            .bind(state.expires_at)
            .bind(session.map(|s| s.session_id.clone()))
            .bind(session.map(|s| s.token.key_id.clone()))
            .bind(session.map(|s| s.token.blob.clone()))
            .bind(state.code_verifier.as_ref().map(|v| v.key_id.clone()))
            .bind(state.code_verifier.as_ref().map(|v| v.blob.clone()))
            .bind(&state.region)
            .execute(&mut *self.writer().await?)
            .await?;
            Ok(())
        }

        async fn insert_states_for_patients(&self, states: &[OAuthStateRecord]) -> StoreResult<Vec<String>> {
            if states.is_empty() {
                return Ok(Vec::new());
            }
            let sql = $crate::store::sql::insert_states_sql(states.len());
            let mut query = sqlx::query_as::<_, (String,)>(&sql);
            for state in states {
                let session = state.session.as_ref();
                query = query
                    .bind(&state.state_hash)
                    .bind(&state.project_id)
                    .bind(&state.patient_id)
                    .bind(&state.provider)
                    .bind(&state.redirect_uri)
                    .bind(state.created_at)
                    .bind(state.expires_at)
                    .bind(session.map(|s| s.session_id.clone()))
                    .bind(session.map(|s| s.token.key_id.clone()))
                    .bind(session.map(|s| s.token.blob.clone()))
                    .bind(state.code_verifier.as_ref().map(|v| v.key_id.clone()))
                    .bind(state.code_verifier.as_ref().map(|v| v.blob.clone()))
                    .bind(&state.region);
            }
            Ok(query.fetch_all(&mut *self.writer().await?).await?.into_iter().map(|(hash,)| hash).collect())
        }

        async fn take_states(&self, state_hashes: &[String]) -> StoreResult<Vec<OAuthStateRecord>> {
            if state_hashes.is_empty() {
                return Ok(Vec::new());
            }
            let sql = format!(
                "DELETE FROM oauth_states WHERE state_hash IN {}
                 RETURNING state_hash, project_id, patient_id, provider, redirect_uri, created_at, expires_at,
                           session_id, session_key_id, session_token, verifier_key_id, code_verifier, region",
                $crate::store::sql::parameter_list(state_hashes.len()),
            );
            let mut query = sqlx::query(&sql);
            for hash in state_hashes {
                query = query.bind(hash);
            }
            query.fetch_all(&mut *self.writer().await?).await?.iter().map(state_from_row).collect()
        }

        async fn delete_expired_states(&self, now: i64, limit: u32) -> StoreResult<u64> {
            Ok(sqlx::query(concat!(
                "DELETE FROM oauth_states WHERE state_hash IN
                     (SELECT state_hash FROM oauth_states WHERE expires_at <= $1 LIMIT $2",
                $skip_locked,
                ")"
            ))
                .bind(now)
                .bind(i64::from(limit))
                .execute(&mut *self.writer().await?)
                .await?
                .rows_affected())
        }
    }

    #[async_trait]
    impl $crate::store::ConnectionStore for $store {
        async fn find_connection(
            &self,
            project_id: &str,
            patient_id: &str,
            provider: &str,
        ) -> StoreResult<Option<ConnectionRecord>> {
            sqlx::query("SELECT * FROM connections WHERE project_id = $1 AND patient_id = $2 AND provider = $3")
                .bind(project_id)
                .bind(patient_id)
                .bind(provider)
                .fetch_optional(self.reader())
                .await?
                .as_ref()
                .map(connection_from_row)
                .transpose()
        }

        async fn find_connection_by_endpoint(&self, endpoint_id: &str) -> StoreResult<Option<ConnectionRecord>> {
            sqlx::query("SELECT * FROM connections WHERE endpoint_id = $1")
                .bind(endpoint_id)
                .fetch_optional(self.reader())
                .await?
                .as_ref()
                .map(connection_from_row)
                .transpose()
        }

        async fn find_connection_by_remote_user(
            &self,
            project_id: &str,
            provider: &str,
            remote_user_id: &str,
        ) -> StoreResult<Option<ConnectionRecord>> {
            sqlx::query("SELECT * FROM connections WHERE project_id = $1 AND provider = $2 AND remote_user_id = $3")
                .bind(project_id)
                .bind(provider)
                .bind(remote_user_id)
                .fetch_optional(self.reader())
                .await?
                .as_ref()
                .map(connection_from_row)
                .transpose()
        }

        async fn list_connections(
            &self,
            project_id: &str,
            filter: &ConnectionFilter,
        ) -> StoreResult<Vec<ConnectionRecord>> {
            let rows = sqlx::query(
                "SELECT * FROM connections WHERE project_id = $1
                 AND ($2 IS NULL OR patient_id = $2) AND ($3 IS NULL OR provider = $3)
                 ORDER BY connected_at, endpoint_id",
            )
            .bind(project_id)
            .bind(&filter.patient_id)
            .bind(&filter.provider)
            .fetch_all(self.reader())
            .await?;
            rows.iter().map(connection_from_row).collect()
        }

        async fn save_connections(&self, items: &[(ConnectionRecord, Value)]) -> StoreResult<Vec<StoredResource>> {
            let ids: std::collections::HashSet<&str> = items.iter().map(|(c, _)| c.endpoint_id.as_str()).collect();
            if ids.len() != items.len() {
                return Err(StoreError::Conflict);
            }
            if items.is_empty() {
                return Ok(Vec::new());
            }
            let mut writer = self.writer().await?;
            let mut tx = $begin_write(&mut writer).await?;
            // The Endpoints that exist, locked in one order so that two instances cannot deadlock.
            let sql = format!(
                concat!(
                    "SELECT id, version_id FROM fhir_resources WHERE resource_type = 'Endpoint' AND id IN {} ORDER BY id",
                    $lock_rows
                ),
                $crate::store::sql::parameter_list(items.len()),
            );
            let mut query = sqlx::query_as::<_, (String, i64)>(&sql);
            for (c, _) in items {
                query = query.bind(&c.endpoint_id);
            }
            let versions: std::collections::HashMap<String, i64> = query.fetch_all(&mut *tx).await?.into_iter().collect();
            let saved: Vec<StoredResource> = items
                .iter()
                .map(|(c, endpoint)| {
                    let version_id = versions.get(&c.endpoint_id).map_or(1, |v| v + 1);
                    let body = with_meta(endpoint.clone(), &c.endpoint_id, version_id, c.updated_at);
                    StoredResource { id: c.endpoint_id.clone(), version_id, last_updated: c.updated_at, body }
                })
                .collect();
            let sql = format!(
                "INSERT INTO fhir_resources (resource_type, id, project_id, patient_id, version_id, last_updated, content)
                 VALUES {}
                 ON CONFLICT (resource_type, id) DO UPDATE
                 SET version_id = excluded.version_id, last_updated = excluded.last_updated, content = excluded.content",
                $crate::store::sql::value_rows(items.len(), 6, |p| format!("('Endpoint', {})", p.join(", "))),
            );
            let mut query = sqlx::query(&sql);
            for ((c, _), stored) in items.iter().zip(&saved) {
                query = query
                    .bind(&c.endpoint_id)
                    .bind(&c.project_id)
                    .bind(&c.patient_id)
                    .bind(stored.version_id)
                    .bind(c.updated_at)
                    .bind(stored.body.to_string());
            }
            query.execute(&mut *tx).await?;
            // A (re)connect starts the lifecycle afresh: no failures, no lease, no pending error. A
            // connection of the same patient under another Endpoint fails the unique key (Conflict).
            let sql = format!(
                "INSERT INTO connections (endpoint_id, project_id, patient_id, provider, remote_user_id, scopes, status,
                     token_key_id, token_ciphertext, has_refresh_token, expires_at, connected_at, updated_at,
                     last_refreshed_at, last_error, refresh_failures, next_attempt_at, lease_owner, lease_until, region)
                 VALUES {}
                 ON CONFLICT (endpoint_id) DO UPDATE SET remote_user_id = excluded.remote_user_id,
                     scopes = excluded.scopes, status = excluded.status, token_key_id = excluded.token_key_id,
                     token_ciphertext = excluded.token_ciphertext, has_refresh_token = excluded.has_refresh_token,
                     expires_at = excluded.expires_at, connected_at = excluded.connected_at,
                     updated_at = excluded.updated_at, last_refreshed_at = NULL, last_error = NULL,
                     refresh_failures = 0, next_attempt_at = NULL, lease_owner = NULL, lease_until = NULL,
                     region = excluded.region",
                $crate::store::sql::value_rows(items.len(), 14, |p| {
                    format!("({}, NULL, NULL, 0, NULL, NULL, NULL, {})", p[..13].join(", "), p[13])
                }),
            );
            let mut query = sqlx::query(&sql);
            for (c, _) in items {
                query = query
                    .bind(&c.endpoint_id)
                    .bind(&c.project_id)
                    .bind(&c.patient_id)
                    .bind(&c.provider)
                    .bind(&c.remote_user_id)
                    .bind(serde_json::to_string(&c.scopes).expect("strings serialize"))
                    .bind(&c.status)
                    .bind(c.tokens.as_ref().map(|t| t.key_id.clone()))
                    .bind(c.tokens.as_ref().map(|t| t.blob.clone()))
                    .bind(i64::from(c.has_refresh_token))
                    .bind(c.expires_at)
                    .bind(c.connected_at)
                    .bind(c.updated_at)
                    .bind(&c.region);
            }
            query.execute(&mut *tx).await?;
            // The platform hears of it with the change, or not at all.
            for (c, _) in items {
                let kind = if versions.contains_key(&c.endpoint_id) {
                    $crate::events::CONNECTION_UPDATED
                } else {
                    $crate::events::CONNECTION_CREATED
                };
                emit_in(&mut tx, &$crate::events::connection_event(kind, c, None, c.updated_at), None).await?;
            }
            for ((c, _), stored) in items.iter().zip(&saved) {
                outbox_in(&mut tx, &c.project_id, &[("Endpoint", c.endpoint_id.as_str(), stored.version_id)], c.updated_at)
                    .await?;
            }
            // Connecting (or reconnecting) queues the connection's backfill in the same
            // transaction: no connection is saved without it.
            let backfills: Vec<_> =
                items.iter().map(|(c, _)| $crate::sync::backfill_job(&c.project_id, &c.endpoint_id, c.updated_at)).collect();
            insert_jobs(&mut tx, &backfills).await?;
            tx.commit().await?;
            Ok(saved)
        }

        async fn claim_due_refreshes(&self, lease: &Lease, due_before: i64, limit: i64) -> StoreResult<Vec<String>> {
            let rows: Vec<(String,)> = sqlx::query_as(concat!(
                "UPDATE connections SET lease_owner = $1, lease_until = $2
                 WHERE endpoint_id IN (
                     SELECT endpoint_id FROM connections
                     WHERE status = 'active' AND has_refresh_token = 1 AND token_ciphertext IS NOT NULL
                       AND expires_at IS NOT NULL AND expires_at <= $3
                       AND (lease_until IS NULL OR lease_until <= $4)
                       AND (next_attempt_at IS NULL OR next_attempt_at <= $4)
                     ORDER BY expires_at LIMIT $5",
                $skip_locked,
                ")
                 RETURNING endpoint_id"
            ))
            .bind(&lease.owner)
            .bind(lease.until)
            .bind(due_before)
            .bind(lease.now)
            .bind(limit)
            .fetch_all(&mut *self.writer().await?)
            .await?;
            Ok(rows.into_iter().map(|(id,)| id).collect())
        }

        async fn claim_refresh(&self, lease: &Lease, endpoint_id: &str) -> StoreResult<bool> {
            let claimed = sqlx::query(
                "UPDATE connections SET lease_owner = $1, lease_until = $2
                 WHERE endpoint_id = $3 AND (lease_until IS NULL OR lease_until <= $4 OR lease_owner = $1)",
            )
            .bind(&lease.owner)
            .bind(lease.until)
            .bind(endpoint_id)
            .bind(lease.now)
            .execute(&mut *self.writer().await?)
            .await?
            .rows_affected();
            Ok(claimed == 1)
        }

        async fn release_refresh(&self, lease: &Lease, endpoint_id: &str) -> StoreResult<()> {
            sqlx::query(
                "UPDATE connections SET lease_owner = NULL, lease_until = NULL WHERE endpoint_id = $1 AND lease_owner = $2",
            )
            .bind(endpoint_id)
            .bind(&lease.owner)
            .execute(&mut *self.writer().await?)
            .await?;
            Ok(())
        }

        async fn complete_refresh(
            &self,
            lease: &Lease,
            c: &ConnectionRecord,
            endpoint: Value,
        ) -> StoreResult<Option<StoredResource>> {
            let tokens = c.tokens.as_ref().ok_or_else(|| StoreError::Corrupt("refresh without tokens".into()))?;
            let mut writer = self.writer().await?;
            let mut tx = $begin_write(&mut writer).await?;
            let updated = sqlx::query(
                "UPDATE connections SET token_key_id = $1, token_ciphertext = $2, has_refresh_token = $3,
                     expires_at = $4, updated_at = $5, last_refreshed_at = $5, last_error = NULL,
                     refresh_failures = 0, next_attempt_at = $8, lease_owner = NULL, lease_until = NULL
                 WHERE endpoint_id = $6 AND lease_owner = $7 AND status = 'active'",
            )
            .bind(&tokens.key_id)
            .bind(&tokens.blob)
            .bind(i64::from(c.has_refresh_token))
            .bind(c.expires_at)
            .bind(c.updated_at)
            .bind(&c.endpoint_id)
            .bind(&lease.owner)
            .bind(c.next_attempt_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 0 {
                return Ok(None);
            }
            let stored = write_endpoint_version(&mut tx, &c.endpoint_id, endpoint, c.updated_at).await?;
            tx.commit().await?;
            Ok(Some(stored))
        }

        async fn record_refresh_failure(
            &self,
            lease: &Lease,
            endpoint_id: &str,
            failures: i64,
            next_attempt_at: i64,
            error: &str,
        ) -> StoreResult<()> {
            sqlx::query(
                "UPDATE connections SET refresh_failures = $1, next_attempt_at = $2, last_error = $3,
                     lease_owner = NULL, lease_until = NULL
                 WHERE endpoint_id = $4 AND lease_owner = $5",
            )
            .bind(failures)
            .bind(next_attempt_at)
            .bind(error)
            .bind(endpoint_id)
            .bind(&lease.owner)
            .execute(&mut *self.writer().await?)
            .await?;
            Ok(())
        }

        async fn set_connection_status(
            &self,
            endpoint_id: &str,
            status: &str,
            reason: Option<&str>,
            wipe_tokens: bool,
            endpoint: Value,
            revocation: Option<&PendingRevocation>,
        ) -> StoreResult<bool> {
            let now = $crate::time::now_ms();
            let mut writer = self.writer().await?;
            let mut tx = $begin_write(&mut writer).await?;
            let changed = sqlx::query(
                "UPDATE connections SET status = $1, last_error = COALESCE($2, last_error), updated_at = $3,
                     token_key_id = CASE WHEN $4 = 1 THEN NULL ELSE token_key_id END,
                     token_ciphertext = CASE WHEN $4 = 1 THEN NULL ELSE token_ciphertext END,
                     has_refresh_token = CASE WHEN $4 = 1 THEN 0 ELSE has_refresh_token END,
                     lease_owner = NULL, lease_until = NULL
                 WHERE endpoint_id = $5 AND status <> $1",
            )
            .bind(status)
            .bind(reason)
            .bind(now)
            .bind(i64::from(wipe_tokens))
            .bind(endpoint_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed == 0 {
                return Ok(false);
            }
            write_endpoint_version(&mut tx, endpoint_id, endpoint, now).await?;
            if status != "active" {
                // Nothing more is fetched for a connection that is off or broken: its queued work
                // goes, its unprocessed events are set aside.
                // Jobs a worker holds finish by themselves: they see the connection is no longer active.
                sqlx::query("DELETE FROM jobs WHERE endpoint_id = $1 AND lease_owner IS NULL")
                    .bind(endpoint_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "UPDATE webhook_events SET state = 'ignored', last_error = $1, processed_at = $2
                     WHERE endpoint_id = $3 AND state = 'received'
                       AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.kind = 'webhook_event' AND j.unique_key = webhook_events.id)",
                )
                .bind(format!("connection {status}"))
                .bind(now)
                .bind(endpoint_id)
                .execute(&mut *tx)
                .await?;
            }
            let changed = sqlx::query("SELECT * FROM connections WHERE endpoint_id = $1")
                .bind(endpoint_id)
                .fetch_one(&mut *tx)
                .await?;
            let changed = connection_from_row(&changed)?;
            let kind = if status == "off" { $crate::events::CONNECTION_REVOKED } else { $crate::events::CONNECTION_ERROR };
            emit_in(&mut tx, &$crate::events::connection_event(kind, &changed, reason, now), None).await?;
            if let Some(r) = revocation {
                sqlx::query(
                    "INSERT INTO pending_revocations (id, project_id, endpoint_id, provider, remote_user_id,
                         token_key_id, token_ciphertext, attempts, next_attempt_at, last_error, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(&r.id)
                .bind(&r.project_id)
                .bind(&r.endpoint_id)
                .bind(&r.provider)
                .bind(&r.remote_user_id)
                .bind(&r.token.key_id)
                .bind(&r.token.blob)
                .bind(r.attempts)
                .bind(r.next_attempt_at)
                .bind(&r.last_error)
                .bind(r.created_at)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(true)
        }

        async fn claim_due_revocations(&self, lease: &Lease, limit: i64) -> StoreResult<Vec<PendingRevocation>> {
            // Claiming pushes the next attempt to the lease's end: a crashed claimer's work comes back then.
            let rows = sqlx::query(concat!(
                "UPDATE pending_revocations SET next_attempt_at = $1
                 WHERE id IN (SELECT id FROM pending_revocations WHERE next_attempt_at <= $2
                              ORDER BY next_attempt_at LIMIT $3",
                $skip_locked,
                ")
                 RETURNING *"
            ))
            .bind(lease.until)
            .bind(lease.now)
            .bind(limit)
            .fetch_all(&mut *self.writer().await?)
            .await?;
            rows.iter().map(revocation_from_row).collect()
        }

        async fn complete_revocation(&self, id: &str) -> StoreResult<()> {
            sqlx::query("DELETE FROM pending_revocations WHERE id = $1").bind(id).execute(&mut *self.writer().await?).await?;
            Ok(())
        }

        async fn fail_revocation(&self, id: &str, attempts: i64, next_attempt_at: i64, error: &str) -> StoreResult<()> {
            sqlx::query("UPDATE pending_revocations SET attempts = $1, next_attempt_at = $2, last_error = $3 WHERE id = $4")
                .bind(attempts)
                .bind(next_attempt_at)
                .bind(error)
                .bind(id)
                .execute(&mut *self.writer().await?)
                .await?;
            Ok(())
        }

        async fn count_pending_revocations(&self, project_id: &str) -> StoreResult<i64> {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM pending_revocations WHERE project_id = $1")
                .bind(project_id)
                .fetch_one(self.reader())
                .await?;
            Ok(n)
        }

        async fn append_audit(&self, e: &AuditEntry) -> StoreResult<()> {
            sqlx::query(
                "INSERT INTO audit_log (id, project_id, actor, action, endpoint_id, at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&e.id)
            .bind(&e.project_id)
            .bind(&e.actor)
            .bind(&e.action)
            .bind(&e.endpoint_id)
            .bind(e.at)
            .execute(&mut *self.writer().await?)
            .await?;
            Ok(())
        }

        async fn list_audit(&self, project_id: &str) -> StoreResult<Vec<AuditEntry>> {
            let rows = sqlx::query("SELECT * FROM audit_log WHERE project_id = $1 ORDER BY at, id")
                .bind(project_id)
                .fetch_all(self.reader())
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(AuditEntry {
                        id: row.try_get("id")?,
                        project_id: row.try_get("project_id")?,
                        actor: row.try_get("actor")?,
                        action: row.try_get("action")?,
                        endpoint_id: row.try_get("endpoint_id")?,
                        at: row.try_get("at")?,
                    })
                })
                .collect()
        }
    }

    #[async_trait]
    impl $crate::store::WebhookStore for $store {
        async fn insert_event(&self, e: &WebhookEvent) -> StoreResult<bool> {
            // A batch of one: the same statement, the same job queued with it.
            Ok(self.insert_events(std::slice::from_ref(e)).await?.first().copied().unwrap_or(false))
        }

        async fn insert_events(&self, events: &[WebhookEvent]) -> StoreResult<Vec<bool>> {
            if events.is_empty() {
                return Ok(Vec::new());
            }
            let mut writer = self.writer().await?;
            let mut tx = $begin_write(&mut writer).await?;
            // One statement for the batch; the ids it answers are the events that were new (a
            // key repeated within the batch is inserted once, for its first row).
            let sql = format!(
                "INSERT INTO webhook_events (id, project_id, provider, dedup_key, event_type, remote_user_id,
                     endpoint_id, patient_id, payload, state, attempts, next_attempt_at, last_error, received_at,
                     processed_at)
                 VALUES {}
                 ON CONFLICT (project_id, provider, dedup_key) DO NOTHING
                 RETURNING id",
                $crate::store::sql::value_rows(events.len(), 15, |p| format!("({})", p.join(", "))),
            );
            let mut query = sqlx::query_as::<_, (String,)>(&sql);
            for e in events {
                query = query
                    .bind(&e.id)
                    .bind(&e.project_id)
                    .bind(&e.provider)
                    .bind(&e.dedup_key)
                    .bind(&e.event_type)
                    .bind(&e.remote_user_id)
                    .bind(&e.endpoint_id)
                    .bind(&e.patient_id)
                    .bind(&e.payload)
                    .bind(&e.state)
                    .bind(e.attempts)
                    .bind(e.next_attempt_at)
                    .bind(&e.last_error)
                    .bind(e.received_at)
                    .bind(e.processed_at);
            }
            let inserted: std::collections::HashSet<String> =
                query.fetch_all(&mut *tx).await?.into_iter().map(|(id,)| id).collect();
            let jobs: Vec<_> = events
                .iter()
                .filter(|e| e.state == "received" && inserted.contains(&e.id))
                .map($crate::sync::event_job)
                .collect();
            insert_jobs(&mut tx, &jobs).await?;
            tx.commit().await?;
            Ok(events.iter().map(|e| inserted.contains(&e.id)).collect())
        }

        async fn read_event(&self, id: &str) -> StoreResult<Option<WebhookEvent>> {
            sqlx::query("SELECT * FROM webhook_events WHERE id = $1")
                .bind(id)
                .fetch_optional(self.reader())
                .await?
                .as_ref()
                .map(event_from_row)
                .transpose()
        }

        async fn complete_event(
            &self,
            lease: &Lease,
            job_id: &str,
            event_id: &str,
            outcome: &$crate::store::EventOutcome,
        ) -> StoreResult<bool> {
            let mut writer = self.writer().await?;
            let mut tx = $begin_write(&mut writer).await?;
            if !complete_job_in(&mut tx, lease, job_id, &outcome.job).await? {
                return Ok(false);
            }
            sqlx::query(
                "UPDATE webhook_events SET state = $1, attempts = $2, last_error = $3, synced_refs = $4,
                     processed_at = $5
                 WHERE id = $6",
            )
            .bind(&outcome.state)
            .bind(outcome.attempts)
            .bind(&outcome.error)
            .bind(outcome.refs.as_ref().map(|r| serde_json::to_string(r).expect("strings serialize")))
            .bind(outcome.processed_at)
            .bind(event_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        }

        async fn list_events(&self, project_id: &str, filter: &EventFilter) -> StoreResult<Vec<WebhookEvent>> {
            let rows = sqlx::query(
                "SELECT * FROM webhook_events WHERE project_id = $1
                 AND ($2 IS NULL OR patient_id = $2) AND ($3 IS NULL OR state = $3)
                 ORDER BY received_at DESC, id LIMIT 1000",
            )
            .bind(project_id)
            .bind(&filter.patient_id)
            .bind(&filter.state)
            .fetch_all(self.reader())
            .await?;
            rows.iter().map(event_from_row).collect()
        }

        async fn count_events(&self, project_id: &str) -> StoreResult<Vec<(String, i64)>> {
            Ok(sqlx::query_as(
                "SELECT state, COUNT(*) FROM webhook_events WHERE project_id = $1 GROUP BY state ORDER BY state",
            )
            .bind(project_id)
            .fetch_all(self.reader())
            .await?)
        }

        async fn count_inbox(&self) -> StoreResult<Vec<(String, i64)>> {
            // Walks the (state, next_attempt_at) index, not the table.
            Ok(sqlx::query_as("SELECT state, COUNT(*) FROM webhook_events GROUP BY state ORDER BY state")
                .fetch_all(self.reader())
                .await?)
        }

        async fn replay_event(&self, project_id: &str, id: &str, now: i64) -> StoreResult<bool> {
            let mut writer = self.writer().await?;
            let mut tx = $begin_write(&mut writer).await?;
            let event = sqlx::query(
                "UPDATE webhook_events SET state = 'received', attempts = 0, next_attempt_at = $1, last_error = NULL,
                     processed_at = NULL, synced_refs = NULL
                 WHERE project_id = $2 AND id = $3
                 RETURNING *",
            )
            .bind(now)
            .bind(project_id)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(event) = event.as_ref().map(event_from_row).transpose()? else {
                return Ok(false);
            };
            // A job still queued for it (not dead yet) stays; otherwise a new one is queued.
            insert_jobs(&mut tx, &[$crate::sync::event_job(&event)]).await?;
            tx.commit().await?;
            Ok(true)
        }
    }
    };
}

pub(crate) use impl_sql_store;

/// `($1, $2, …, $n)`, for `IN`.
pub(super) fn parameter_list(n: usize) -> String {
    let params: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
    format!("({})", params.join(", "))
}

/// `rows` rows of `width` numbered parameters each, every row written by `row` from its
/// parameters: with `|p| format!("({})", p.join(", "))`, `($1, $2), ($3, $4)`.
/// Connect's state insert for `n` states (see `insert_states_for_patients`), its text built once
/// per batch size: building it took a tenth of a connect's instructions (callgrind).
pub(super) fn insert_states_sql(n: usize) -> std::borrow::Cow<'static, str> {
    const CACHED: usize = 64;
    static TEXTS: [std::sync::OnceLock<String>; CACHED] = [const { std::sync::OnceLock::new() }; CACHED];
    let build = || {
        format!(
            "WITH v (state_hash, project_id, patient_id, provider, redirect_uri, created_at, expires_at,
                     session_id, session_key_id, session_token, verifier_key_id, code_verifier, region) AS
                 (VALUES {})
             INSERT INTO oauth_states (state_hash, project_id, patient_id, provider, redirect_uri, created_at, expires_at,
                                       session_id, session_key_id, session_token, verifier_key_id, code_verifier, region)
             SELECT state_hash, project_id, patient_id, provider, redirect_uri, created_at, expires_at,
                    session_id, session_key_id, session_token, verifier_key_id, code_verifier, region FROM v
             WHERE EXISTS (SELECT 1 FROM fhir_resources r
                           WHERE r.resource_type = 'Patient' AND r.id = v.patient_id AND r.project_id = v.project_id)
             RETURNING state_hash",
            value_rows(n, 13, |p| format!("({})", p.join(", "))),
        )
    };
    match TEXTS.get(n.wrapping_sub(1)) {
        Some(text) => text.get_or_init(build).as_str().into(),
        None => build().into(),
    }
}

pub(super) fn value_rows(rows: usize, width: usize, row: fn(&[String]) -> String) -> String {
    let rows: Vec<String> =
        (0..rows).map(|r| row(&(1..=width).map(|i| format!("${}", r * width + i)).collect::<Vec<_>>())).collect();
    rows.join(", ")
}
