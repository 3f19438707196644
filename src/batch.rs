//! Group commit of the writes on the connect → callback path and of the webhook inbox: concurrent
//! callers share one statement (or one transaction) instead of one each. Nothing waits on a timer — a batch is
//! whatever queued while the previous one was being written, so a lone caller is written at once,
//! and each caller still gets its answer only after its write has committed.
//!
//! On SQLite, where one connection writes, this is what lets the write path scale: the cost of a
//! write is mostly the round trips to the database thread and the commit, and a batch pays them once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::store::{ConnectionRecord, OAuthStateRecord, Store, StoreError, StoreResult, StoredResource, WebhookEvent};

/// Items written together at most (statement parameters stay far below every backend's limit).
const MAX_BATCH: usize = 64;

type Answer<O> = oneshot::Sender<StoreResult<O>>;
/// Writes a batch; answers one result per item, in order.
type WriteBatch<I, O> = fn(Arc<dyn Store>, Vec<I>) -> BoxFuture<'static, Vec<StoreResult<O>>>;

/// A queue in front of one batched write.
pub struct Batcher<I, O> {
    store: Arc<dyn Store>,
    write: WriteBatch<I, O>,
    /// Started on first use, so commands that never write start no task.
    queue: OnceLock<mpsc::UnboundedSender<(I, Answer<O>)>>,
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    fn new(store: Arc<dyn Store>, write: WriteBatch<I, O>) -> Self {
        Self { store, write, queue: OnceLock::new() }
    }

    pub async fn run(&self, item: I) -> StoreResult<O> {
        let queue = self.queue.get_or_init(|| {
            let (queue, jobs) = mpsc::unbounded_channel();
            tokio::spawn(write_batches(Arc::clone(&self.store), self.write, jobs));
            queue
        });
        let (answer, answered) = oneshot::channel();
        queue.send((item, answer)).map_err(|_| unanswered())?;
        answered.await.map_err(|_| unanswered())?
    }
}

fn unanswered() -> StoreError {
    StoreError::Unavailable("the batch writer did not answer".into())
}

async fn write_batches<I: Send + 'static, O: Send + 'static>(
    store: Arc<dyn Store>,
    write: WriteBatch<I, O>,
    mut jobs: mpsc::UnboundedReceiver<(I, Answer<O>)>,
) {
    // While as many batches as the backend writes at once are in flight, callers queue: the next
    // batch is taken only when one of them is done.
    let in_flight = Arc::new(Semaphore::new(store.parallel_writes()));
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let Ok(slot) = Arc::clone(&in_flight).acquire_owned().await else { return };
        if jobs.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        // Let the tasks that are ready run first: under load they are callers about to queue,
        // and a bigger batch means fewer commits. Idle, nothing else is ready and this returns at once.
        tokio::task::yield_now().await;
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (items, answers): (Vec<I>, Vec<Answer<O>>) = batch.drain(..).unzip();
        let store = Arc::clone(&store);
        // A task of its own: a write that panics ends only this task; its callers see their answers
        // dropped (`unanswered`) and the slot comes back for the next batch.
        tokio::spawn(async move {
            let results = write(store, items).await;
            for (answer, result) in answers.into_iter().zip(results) {
                let _ = answer.send(result); // the caller may have gone away
            }
            drop(slot);
        });
    }
}

/// One store error, answered to every caller of a failed batch.
fn all_failed<O>(n: usize, e: &StoreError) -> Vec<StoreResult<O>> {
    (0..n).map(|_| Err(e.clone())).collect()
}

/// The batched writes of the connect → callback path and of the webhook inbox.
pub struct Writes {
    /// Connect: stores a state when its patient exists in its project; answers whether it did.
    pub insert_state: Batcher<OAuthStateRecord, bool>,
    /// Callback: deletes and returns the state with this hash; of several takers only one gets it.
    pub take_state: Batcher<String, Option<OAuthStateRecord>>,
    /// Callback: writes the connection and the next version of its Endpoint.
    pub save_connection: Batcher<(ConnectionRecord, Value), StoredResource>,
    /// Webhooks: stores an event (with its job) unless its provider key is in; answers whether it was new.
    pub insert_event: Batcher<WebhookEvent, bool>,
}

impl Writes {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            insert_state: Batcher::new(Arc::clone(&store), |store, states| Box::pin(insert_states(store, states))),
            take_state: Batcher::new(Arc::clone(&store), |store, hashes| Box::pin(take_states(store, hashes))),
            save_connection: Batcher::new(Arc::clone(&store), |store, items| Box::pin(save_connections(store, items))),
            insert_event: Batcher::new(store, |store, events| Box::pin(insert_events(store, events))),
        }
    }
}

async fn insert_states(store: Arc<dyn Store>, states: Vec<OAuthStateRecord>) -> Vec<StoreResult<bool>> {
    match store.insert_states_for_patients(&states).await {
        Ok(written) => {
            let written: HashSet<String> = written.into_iter().collect();
            states.iter().map(|s| Ok(written.contains(&s.state_hash))).collect()
        }
        Err(e) => all_failed(states.len(), &e),
    }
}

async fn take_states(store: Arc<dyn Store>, hashes: Vec<String>) -> Vec<StoreResult<Option<OAuthStateRecord>>> {
    match store.take_states(&hashes).await {
        Ok(taken) => {
            let mut taken: HashMap<String, OAuthStateRecord> =
                taken.into_iter().map(|s| (s.state_hash.clone(), s)).collect();
            // `remove`: when one state comes twice in a batch, only the first caller gets it.
            hashes.iter().map(|h| Ok(taken.remove(h))).collect()
        }
        Err(e) => all_failed(hashes.len(), &e),
    }
}

/// One transaction for the batch; if it fails (another writer created one of these connections
/// first, say), each is written on its own so that only the one in conflict fails.
async fn save_connections(
    store: Arc<dyn Store>,
    items: Vec<(ConnectionRecord, Value)>,
) -> Vec<StoreResult<StoredResource>> {
    match store.save_connections(&items).await {
        Ok(saved) => return saved.into_iter().map(Ok).collect(),
        Err(e) if items.len() == 1 => return vec![Err(e)],
        Err(_) => {}
    }
    let mut results = Vec::with_capacity(items.len());
    for (connection, endpoint) in items {
        results.push(store.save_connection(&connection, endpoint).await);
    }
    results
}

/// One transaction for the batch. An event whose provider key came earlier in the batch is a
/// provider's retry: the first is written and the repeat answered "not new" after that commit.
/// If the transaction fails, each event is written on its own (in order, so a repeat still meets
/// its first), and only the one at fault fails.
async fn insert_events(store: Arc<dyn Store>, events: Vec<WebhookEvent>) -> Vec<StoreResult<bool>> {
    let mut first_of_key = HashMap::new();
    let firsts: Vec<usize> = (0..events.len())
        .filter(|&i| {
            let e = &events[i];
            *first_of_key.entry((e.project_id.as_str(), e.provider.as_str(), e.dedup_key.as_str())).or_insert(i) == i
        })
        .collect();
    let written = if firsts.len() == events.len() {
        store.insert_events(&events).await
    } else {
        let distinct: Vec<WebhookEvent> = firsts.iter().map(|&i| events[i].clone()).collect();
        store.insert_events(&distinct).await
    };
    match written {
        Ok(new) => {
            let mut answers = vec![Ok(false); events.len()];
            for (&i, new) in firsts.iter().zip(new) {
                answers[i] = Ok(new);
            }
            return answers;
        }
        Err(e) if events.len() == 1 => return vec![Err(e)],
        Err(_) => {}
    }
    let mut results = Vec::with_capacity(events.len());
    for event in &events {
        results.push(store.insert_event(event).await);
    }
    results
}
