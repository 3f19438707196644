//! What the retention sweep deletes (`Services::prune_finished`): rows that only record finished
//! work. Implemented for both backends by `sql_retention.rs`.

use async_trait::async_trait;

use super::StoreResult;

#[async_trait]
pub trait RetentionStore: Send + Sync {
    /// Deletes at most `limit` rows of each table that record work finished before `cutoff`
    /// (epoch ms): delivered or failed deliveries, outbound events none of whose deliveries is
    /// left, and inbox events that ended (synced, ignored, dead) with no job queued. Pending
    /// deliveries and events still to process are never touched. Answers how many rows went
    /// (fewer than `limit` only when every table is done).
    async fn prune_finished(&self, cutoff: i64, limit: u32) -> StoreResult<u64>;
}
