//! Reads of one node each, coalesced: a read that arrives while another of its kind is in
//! flight waits, and the next reader reads every waiting node in one statement, each caller
//! getting its own node's answer. Nothing waits for company: a lone read is done at once.
//! [`Coalesced`] is keyed by any id: `job_reads.rs` coalesces reads of one job each.
//!
//! When thousands of agents reconnect at once, each registration and each new stream read
//! their node before anything else. One statement per agent was one hand-off to the store's
//! worker thread and back each, most of the storm's cost after the writes were batched
//! (`group_commit.rs`); read together, a storm costs a statement per batch.
//!
//! **Invariant:** a caller's answer comes from a statement that started after its call, so a
//! coalesced read is never older than a read of its own would have been. A batch that fails
//! as a whole is not shared: each of its callers reads alone and gets its own error.

use crate::store::{HeartbeatFacts, RegistrationFacts, Store, StoreError};
use std::collections::HashMap;
use std::future::Future;
use tokio::sync::oneshot;
use tollgate_domain::NodeId;

/// The most nodes one coalesced read takes (a few statements of
/// [`crate::store::HEARTBEATS_PER_STATEMENT`] each).
const MAX_BATCH: usize = 1_000;

/// What a waiting caller is told: its node's answer (`None` for a node the read did not
/// find), or that the batch failed and it must read alone.
type Answer<V> = Result<Option<V>, BatchFailed>;

/// The batch a caller waited in failed as a whole.
#[derive(Debug)]
struct BatchFailed;

/// A caller waiting for its node's (or other key's) read.
struct Waiting<K, V> {
    node: K,
    reply: oneshot::Sender<Answer<V>>,
}

/// Reads of one kind waiting to be made together, and the turn to make them; each read is of
/// one key (a node's name unless said otherwise).
pub struct Coalesced<V, K = NodeId> {
    waiting: std::sync::Mutex<Vec<Waiting<K, V>>>,
    /// Held by the reader of the batch in flight.
    turn: tokio::sync::Mutex<()>,
}

impl<V, K> Default for Coalesced<V, K> {
    fn default() -> Self {
        Self {
            waiting: std::sync::Mutex::default(),
            turn: tokio::sync::Mutex::default(),
        }
    }
}

impl<V, K> std::fmt::Debug for Coalesced<V, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalesced").finish_non_exhaustive()
    }
}

impl<V: Clone, K: Clone + Ord + std::hash::Hash> Coalesced<V, K> {
    /// `node`'s answer from `read_many`, which reads the nodes it is given in one go and
    /// returns those it found, each with its name. Reads waiting meanwhile share the call.
    pub async fn read<F, Fut>(&self, node: &K, read_many: F) -> Result<Option<V>, StoreError>
    where
        F: Fn(Vec<K>) -> Fut,
        Fut: Future<Output = Result<Vec<(K, V)>, StoreError>>,
    {
        let (reply, mut answer) = oneshot::channel();
        self.lock_waiting().push(Waiting {
            node: node.clone(),
            reply,
        });
        let shared = loop {
            let turn = tokio::select! {
                biased;
                answer = &mut answer => break answer,
                turn = self.turn.lock() => turn,
            };
            let batch: Vec<Waiting<K, V>> = {
                let mut waiting = self.lock_waiting();
                let n = waiting.len().min(MAX_BATCH);
                waiting.drain(..n).collect()
            };
            if batch.is_empty() {
                // Every waiting read, this one too, was in the batch just read.
                drop(turn);
                break answer.await;
            }
            let mut nodes: Vec<K> = batch.iter().map(|waiting| waiting.node.clone()).collect();
            nodes.sort_unstable();
            nodes.dedup();
            // A reader that goes away mid-read (its client hung up) drops the batch's replies:
            // its waiters read alone (below), none is left waiting.
            let read = read_many(nodes).await;
            drop(turn);
            match read {
                Ok(found) => {
                    let found: HashMap<K, V> = found.into_iter().collect();
                    for waiting in batch {
                        // The caller may have gone; the others are answered all the same.
                        let _ = waiting.reply.send(Ok(found.get(&waiting.node).cloned()));
                    }
                }
                Err(error) => {
                    if batch.len() > 1 {
                        tracing::debug!(n = batch.len(), %error, "a coalesced read failed as a whole; each of its callers reads alone");
                    }
                    for waiting in batch {
                        let _ = waiting.reply.send(Err(BatchFailed));
                    }
                }
            }
        };
        match shared {
            Ok(Ok(found)) => Ok(found),
            // The batch failed, or its reader went away before answering: read alone.
            Ok(Err(BatchFailed)) | Err(_) => {
                let found = read_many(vec![node.clone()]).await?;
                Ok(found
                    .into_iter()
                    .find_map(|(name, value)| (name == *node).then_some(value)))
            }
        }
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, Vec<Waiting<K, V>>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The node reads every registration and every new stream makes, coalesced.
#[derive(Debug, Default)]
pub struct NodeReads {
    registrations: Coalesced<RegistrationFacts>,
    connections: Coalesced<HeartbeatFacts>,
}

impl NodeReads {
    /// [`Store::registration_facts`], read together with the registrations waiting meanwhile.
    pub async fn registration_facts(
        &self,
        store: &Store,
        node: &NodeId,
    ) -> Result<RegistrationFacts, StoreError> {
        let facts = self
            .registrations
            .read(node, |nodes| async move {
                store.registration_facts_of(&nodes).await
            })
            .await?;
        // Every node asked is answered (an unknown one with no facts); this is the same.
        Ok(facts.unwrap_or_default())
    }

    /// [`Store::heartbeat_facts`] of one node, read together with the new streams' reads
    /// waiting meanwhile; `None` for a node the store does not hold.
    pub async fn heartbeat_facts(
        &self,
        store: &Store,
        node: &NodeId,
    ) -> Result<Option<HeartbeatFacts>, StoreError> {
        self.connections
            .read(node, |nodes| async move {
                let facts = store.heartbeat_facts(&nodes).await?;
                Ok(facts
                    .into_iter()
                    .map(|facts| (facts.node.clone(), facts))
                    .collect())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Notify;

    /// Calls of a fake `read_many`, each with the nodes it was given; the first call waits
    /// until `release` is notified, so that others queue behind it.
    #[derive(Default)]
    struct Reads {
        calls: std::sync::Mutex<Vec<Vec<NodeId>>>,
        release: Notify,
        failing: AtomicUsize,
    }

    impl Reads {
        /// Answers every node with its name's length, except `missing`; the first
        /// `failing` calls of more than one node fail.
        async fn read(
            &self,
            nodes: Vec<NodeId>,
            missing: &str,
        ) -> Result<Vec<(NodeId, usize)>, StoreError> {
            let first = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(nodes.clone());
                calls.len() == 1
            };
            if first {
                self.release.notified().await;
            }
            if nodes.len() > 1 && self.failing.load(Ordering::SeqCst) > 0 {
                self.failing.fetch_sub(1, Ordering::SeqCst);
                return Err(StoreError::Corrupt {
                    what: "a batch".to_owned(),
                    detail: "refused by the test".to_owned(),
                });
            }
            Ok(nodes
                .into_iter()
                .filter(|node| node.as_str() != missing)
                .map(|node| {
                    let len = node.as_str().len();
                    (node, len)
                })
                .collect())
        }

        fn calls(&self) -> Vec<Vec<NodeId>> {
            self.calls.lock().unwrap().clone()
        }
    }

    /// Starts a read of each of `names` once the first (of `first`) is in flight, waits
    /// until they all queue, releases the first and returns every outcome, in order.
    async fn read_behind_one(
        reads: Arc<Reads>,
        first: &str,
        names: &[&str],
    ) -> Vec<Result<Option<usize>, StoreError>> {
        let coalesced = Arc::new(Coalesced::<usize>::default());
        let spawn = |name: &str| {
            let (coalesced, reads) = (coalesced.clone(), reads.clone());
            let node = NodeId::from(name);
            tokio::spawn(async move {
                coalesced
                    .read(&node, |nodes| {
                        let reads = reads.clone();
                        async move { reads.read(nodes, "gone").await }
                    })
                    .await
            })
        };
        let first = spawn(first);
        while reads.calls().is_empty() {
            tokio::task::yield_now().await;
        }
        let others: Vec<_> = names.iter().map(|name| spawn(name)).collect();
        while coalesced.lock_waiting().len() < names.len() {
            tokio::task::yield_now().await;
        }
        reads.release.notify_one();
        let mut outcomes = vec![first.await.unwrap()];
        for other in others {
            outcomes.push(other.await.unwrap());
        }
        outcomes
    }

    #[tokio::test]
    async fn reads_waiting_behind_one_in_flight_share_one_call_each_with_its_own_answer() {
        let reads = Arc::new(Reads::default());
        let outcomes =
            read_behind_one(reads.clone(), "n1", &["node-22", "gone", "n333", "node-22"]).await;
        let answers: Vec<Option<usize>> = outcomes.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, [Some(2), Some(7), None, Some(4), Some(7)]);
        // The first alone, then the four waiting in one call, each node once.
        let calls = reads.calls();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!(
            calls[1],
            ["gone", "n333", "node-22"].map(NodeId::from).to_vec()
        );
    }

    #[tokio::test]
    async fn a_batch_that_fails_whole_is_read_again_one_node_at_a_time() {
        let reads = Arc::new(Reads::default());
        reads.failing.store(1, Ordering::SeqCst);
        let outcomes = read_behind_one(reads.clone(), "n1", &["node-22", "n333"]).await;
        let answers: Vec<Option<usize>> = outcomes.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, [Some(2), Some(7), Some(4)]);
        let mut calls = reads.calls();
        assert_eq!(calls.len(), 4, "{calls:?}");
        // The batch of two failed; then each of its nodes alone (in either order).
        assert_eq!(calls[1].len(), 2);
        calls[2..].sort();
        assert_eq!(
            calls[2..],
            [vec![NodeId::from("n333")], vec![NodeId::from("node-22")]]
        );
    }

    /// A call of `read_many`: its caller and the nodes it was given.
    type Call = (&'static str, Vec<NodeId>);

    #[tokio::test]
    async fn a_reader_that_goes_away_mid_read_leaves_none_of_its_batch_waiting() {
        // Calls of read_many by caller: the first waits until released, the second never
        // ends (its caller is aborted), later ones answer.
        let calls: Arc<std::sync::Mutex<Vec<Call>>> = Arc::default();
        let release = Arc::new(Notify::new());
        let coalesced = Arc::new(Coalesced::<usize>::default());
        let spawn = |caller: &'static str| {
            let (coalesced, calls, release) = (coalesced.clone(), calls.clone(), release.clone());
            tokio::spawn(async move {
                let read_many = |nodes: Vec<NodeId>| {
                    let (calls, release) = (calls.clone(), release.clone());
                    async move {
                        let n = {
                            let mut calls = calls.lock().unwrap();
                            calls.push((caller, nodes.clone()));
                            calls.len()
                        };
                        match n {
                            1 => release.notified().await,
                            2 => std::future::pending().await,
                            _ => {}
                        }
                        Ok(nodes.into_iter().map(|node| (node, 1)).collect())
                    }
                };
                coalesced.read(&NodeId::from(caller), read_many).await
            })
        };
        let first = spawn("first");
        while calls.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let a = spawn("a");
        let b = spawn("b");
        while coalesced.lock_waiting().len() < 2 {
            tokio::task::yield_now().await;
        }
        release.notify_one();
        assert_eq!(first.await.unwrap().unwrap(), Some(1));
        // One of a and b took both into the second call, which hangs: abort that one.
        let reader = loop {
            if let Some((caller, nodes)) = calls.lock().unwrap().get(1).cloned() {
                assert_eq!(nodes, [NodeId::from("a"), NodeId::from("b")]);
                break caller;
            }
            tokio::task::yield_now().await;
        };
        let (aborted, other) = if reader == "a" { (a, b) } else { (b, a) };
        aborted.abort();
        let answer = tokio::time::timeout(std::time::Duration::from_secs(10), other)
            .await
            .expect("the other caller was answered")
            .unwrap();
        assert_eq!(answer.unwrap(), Some(1));
        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert_ne!(calls[2].0, reader);
        assert_eq!(calls[2].1.len(), 1);
    }
}
