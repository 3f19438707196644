//! Connect sessions' SQL, shared by both backends like `sql.rs`.

/// Implements `SessionStore` for `$store` (see `impl_sql_store!`).
macro_rules! impl_session_store {
    (store: $store:ty, row: $row:ty $(,)?) => {
        fn connect_session_from_row(row: &$row) -> StoreResult<$crate::store::sessions::ConnectSessionRecord> {
            let providers: Option<String> = row.try_get("providers")?;
            Ok($crate::store::sessions::ConnectSessionRecord {
                id: row.try_get("id")?,
                token_hash: row.try_get("token_hash")?,
                project_id: row.try_get("project_id")?,
                patient_id: row.try_get("patient_id")?,
                redirect_uri: row.try_get("redirect_uri")?,
                providers: providers
                    .map(|p| serde_json::from_str(&p))
                    .transpose()
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                locale: row.try_get("locale")?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
                ended_at: row.try_get("ended_at")?,
            })
        }

        const CONNECT_SESSION_COLUMNS: &str =
            "id, token_hash, project_id, patient_id, redirect_uri, providers, locale, created_at, expires_at, ended_at";

        #[async_trait]
        impl $crate::store::sessions::SessionStore for $store {
            async fn insert_connect_session(
                &self,
                session: &$crate::store::sessions::ConnectSessionRecord,
            ) -> StoreResult<()> {
                let providers = session.providers.as_ref().map(|p| serde_json::to_string(p).expect("strings serialize"));
                sqlx::query(
                    "INSERT INTO connect_sessions
                         (id, token_hash, project_id, patient_id, redirect_uri, providers, locale, created_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&session.id)
                .bind(&session.token_hash)
                .bind(&session.project_id)
                .bind(&session.patient_id)
                .bind(&session.redirect_uri)
                .bind(providers)
                .bind(&session.locale)
                .bind(session.created_at)
                .bind(session.expires_at)
                .execute(&mut *self.writer().await?)
                .await?;
                Ok(())
            }

            async fn find_connect_session_by_token(
                &self,
                token_hash: &str,
            ) -> StoreResult<Option<$crate::store::sessions::ConnectSessionRecord>> {
                let sql = format!("SELECT {CONNECT_SESSION_COLUMNS} FROM connect_sessions WHERE token_hash = $1");
                let row = sqlx::query(&sql).bind(token_hash).fetch_optional(self.reader()).await?;
                row.as_ref().map(connect_session_from_row).transpose()
            }

            async fn find_connect_session(
                &self,
                id: &str,
            ) -> StoreResult<Option<$crate::store::sessions::ConnectSessionRecord>> {
                let sql = format!("SELECT {CONNECT_SESSION_COLUMNS} FROM connect_sessions WHERE id = $1");
                let row = sqlx::query(&sql).bind(id).fetch_optional(self.reader()).await?;
                row.as_ref().map(connect_session_from_row).transpose()
            }

            async fn end_connect_session(&self, project_id: &str, id: &str, now: i64) -> StoreResult<bool> {
                let done = sqlx::query(
                    "UPDATE connect_sessions SET ended_at = COALESCE(ended_at, $1) WHERE id = $2 AND project_id = $3",
                )
                .bind(now)
                .bind(id)
                .bind(project_id)
                .execute(&mut *self.writer().await?)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn delete_connect_sessions_before(&self, before: i64) -> StoreResult<u64> {
                Ok(sqlx::query("DELETE FROM connect_sessions WHERE expires_at < $1 OR ended_at < $1")
                    .bind(before)
                    .execute(&mut *self.writer().await?)
                    .await?
                    .rows_affected())
            }

            async fn project_name(&self, project_id: &str) -> StoreResult<Option<String>> {
                let row: Option<(String,)> = sqlx::query_as("SELECT name FROM projects WHERE id = $1")
                    .bind(project_id)
                    .fetch_optional(self.reader())
                    .await?;
                Ok(row.map(|(name,)| name))
            }
        }
    };
}

pub(crate) use impl_session_store;
