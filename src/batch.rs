//! Group commit of connect states: concurrent connects share one `INSERT` (one statement, one
//! transaction, one round trip) instead of one each. A state is stored before its connect answers,
//! exactly as without batching; nothing waits on a timer — a batch is whatever queued while the
//! previous one was being written, so a lone connect is written at once.

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

use crate::store::{OAuthStateRecord, Store, StoreError, StoreResult};

/// States written by one statement at most (7 parameters each).
const MAX_BATCH: usize = 64;

struct Job {
    state: OAuthStateRecord,
    done: oneshot::Sender<StoreResult<bool>>,
}

pub struct StateWriter {
    store: Arc<dyn Store>,
    /// Started on first use, so commands that never connect start no task.
    queue: OnceLock<mpsc::UnboundedSender<Job>>,
}

impl StateWriter {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, queue: OnceLock::new() }
    }

    /// Stores the state when its patient exists in its project; answers whether it did.
    pub async fn insert(&self, state: OAuthStateRecord) -> StoreResult<bool> {
        let queue = self.queue.get_or_init(|| {
            let (queue, jobs) = mpsc::unbounded_channel();
            tokio::spawn(write_batches(Arc::clone(&self.store), jobs));
            queue
        });
        let (done, answer) = oneshot::channel();
        queue.send(Job { state, done }).map_err(|_| StoreError::Unavailable("state writer stopped".into()))?;
        answer.await.map_err(|_| StoreError::Unavailable("state writer stopped".into()))?
    }
}

async fn write_batches(store: Arc<dyn Store>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let states: Vec<OAuthStateRecord> = batch.iter().map(|job| job.state.clone()).collect();
        let written = store.insert_states_for_patients(&states).await;
        for job in batch.drain(..) {
            let answer = match &written {
                Ok(hashes) => Ok(hashes.contains(&job.state.state_hash)),
                Err(StoreError::Unavailable(e)) => Err(StoreError::Unavailable(e.clone())),
                Err(e) => Err(StoreError::Database(e.to_string())),
            };
            let _ = job.done.send(answer); // the connect may have gone away
        }
    }
}
