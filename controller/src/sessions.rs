//! Live agent sessions: for each connected node, the sender of its `Connect` command stream.
//!
//! A session exists while the agent's stream is open. It says "a command can be sent now",
//! nothing more: whether a node is unreachable is the lease watchdog's call, made from
//! heartbeats, never from a disconnect.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::mpsc;
use tollgate_domain::NodeId;
use tollgate_proto::v1::ControllerCommand;

/// Commands queued per agent before sends start failing; an agent reads its stream
/// continuously, so a full queue means it is stuck.
pub const COMMAND_QUEUE: usize = 64;

/// One open stream to one agent.
#[derive(Debug)]
struct Session {
    /// Distinguishes this stream from a later one of the same node.
    id: u64,
    /// Where commands for the agent go, boxed: the channel allocates its slots 32 at a time
    /// for every stream, a command's size each (a pointer, where a command is hundreds of
    /// bytes: `heaptrack` counted 6 MiB of those blocks with a thousand agents connected).
    commands: mpsc::Sender<Box<ControllerCommand>>,
    /// Commands queued on this stream so far. The agent's heartbeats say how many it had read,
    /// so the controller knows whether a heartbeat was built after every command it sent.
    n_sent: u64,
}

/// Why a command did not reach an agent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    /// The node has no open stream.
    #[error("node {0} has no open session")]
    NotConnected(NodeId),
    /// The agent is not reading its commands.
    #[error("node {0} is not reading its commands (queue of {COMMAND_QUEUE} full)")]
    Full(NodeId),
}

/// The registry of open sessions, keyed by node. A reconnecting agent replaces its old session.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    by_node: HashMap<NodeId, Session>,
    /// Set on shutdown: no new session is accepted after that.
    closed: bool,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while the lock is held (plain map operations), so poisoning means a
        // bug elsewhere already crashed the task; the map itself is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a session for `node`, replacing any earlier one; returns its id and the receiver
    /// the agent's response stream reads from, or `None` when shutting down.
    pub fn open(&self, node: &NodeId) -> Option<(u64, mpsc::Receiver<Box<ControllerCommand>>)> {
        let mut inner = self.lock();
        if inner.closed {
            return None;
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
        if inner
            .by_node
            .insert(
                node.clone(),
                Session {
                    id,
                    commands,
                    n_sent: 0,
                },
            )
            .is_some()
        {
            tracing::info!(node = %node, "agent reconnected; its previous stream is replaced");
        }
        Some((id, receiver))
    }

    /// Closes the session `id` of `node`, unless a newer stream has replaced it already.
    pub fn close(&self, node: &NodeId, id: u64) {
        let mut inner = self.lock();
        if inner.by_node.get(node).is_some_and(|s| s.id == id) {
            inner.by_node.remove(node);
        }
    }

    /// Closes `node`'s session, whichever it is (its response stream ends).
    pub fn close_node(&self, node: &NodeId) {
        self.lock().by_node.remove(node);
    }

    /// Drops every session (their response streams end) and refuses new ones.
    pub fn close_all(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.by_node.clear();
    }

    /// Whether `node` has an open stream.
    pub fn is_connected(&self, node: &NodeId) -> bool {
        self.lock()
            .by_node
            .get(node)
            .is_some_and(|s| !s.commands.is_closed())
    }

    /// Every node with an open stream.
    pub fn connected_nodes(&self) -> Vec<NodeId> {
        self.lock()
            .by_node
            .iter()
            .filter(|(_, s)| !s.commands.is_closed())
            .map(|(node, _)| node.clone())
            .collect()
    }

    /// Queues `command` for `node` without waiting.
    pub fn send(&self, node: &NodeId, command: ControllerCommand) -> Result<(), SendError> {
        let mut inner = self.lock();
        let session = inner
            .by_node
            .get_mut(node)
            .ok_or_else(|| SendError::NotConnected(node.clone()))?;
        session
            .commands
            .try_send(Box::new(command))
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => SendError::Full(node.clone()),
                mpsc::error::TrySendError::Closed(_) => SendError::NotConnected(node.clone()),
            })?;
        session.n_sent += 1;
        Ok(())
    }

    /// How many commands were queued on session `id` of `node`; `None` once a newer stream
    /// replaced it or it closed.
    pub fn commands_sent(&self, node: &NodeId, id: u64) -> Option<u64> {
        self.lock()
            .by_node
            .get(node)
            .filter(|session| session.id == id)
            .map(|session| session.n_sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnect_replaces_and_the_old_close_keeps_the_new() {
        let sessions = Sessions::default();
        let node = NodeId::from("n1");
        let (old, _old_rx) = sessions.open(&node).expect("open");
        let (new, mut new_rx) = sessions.open(&node).expect("open");
        sessions.close(&node, old);
        assert!(sessions.is_connected(&node));
        assert_eq!(sessions.commands_sent(&node, old), None, "replaced");
        assert_eq!(sessions.commands_sent(&node, new), Some(0));
        sessions
            .send(&node, ControllerCommand::default())
            .expect("sent");
        assert!(new_rx.try_recv().is_ok());
        assert_eq!(
            sessions.commands_sent(&node, new),
            Some(1),
            "counted once queued"
        );
        sessions.close(&node, new);
        assert_eq!(
            sessions.send(&node, ControllerCommand::default()),
            Err(SendError::NotConnected(node.clone()))
        );
    }

    #[test]
    fn nothing_opens_after_shutdown() {
        let sessions = Sessions::default();
        let node = NodeId::from("n1");
        let (_, mut rx) = sessions.open(&node).expect("open");
        sessions.close_all();
        assert!(rx.try_recv().is_err());
        assert!(sessions.open(&node).is_none());
        assert!(sessions.connected_nodes().is_empty());
    }
}
