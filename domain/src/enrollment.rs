//! Enrollment: an operator's one-time, expiring bootstrap token becomes a node's client
//! certificate. [`check`] alone decides whether a token may be spent by a node; the store
//! spends it with a compare-and-set on "not spent yet", so two agents presenting one token
//! never both enroll.

use crate::fleet::Labels;
use crate::{NodeId, Timestamp};

/// The longest a bootstrap token may stay usable.
pub const MAX_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// A bootstrap token as stored (its secret only as a hash, elsewhere).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapToken {
    /// The one node name it enrolls.
    pub node: NodeId,
    /// The node's labels of record.
    pub labels: Labels,
    /// When it stops working.
    pub expires_at: Timestamp,
    /// When it was spent, if it was.
    pub spent_at: Option<Timestamp>,
}

/// Why a bootstrap token may not be spent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnrollRefusal {
    /// No token with this secret exists.
    #[error("unknown bootstrap token: ask an operator for one with `tollgate node enroll NODE`")]
    UnknownToken,
    /// The token was spent already.
    #[error(
        "the bootstrap token for node {node} was already used at {at}: a token enrolls once; \
         ask an operator for a new one with `tollgate node enroll {node}`"
    )]
    Spent {
        /// The token's node.
        node: NodeId,
        /// When it was spent.
        at: Timestamp,
    },
    /// The token expired.
    #[error(
        "the bootstrap token for node {node} expired at {at}: ask an operator for a new one \
         with `tollgate node enroll {node}`"
    )]
    Expired {
        /// The token's node.
        node: NodeId,
        /// When it expired.
        at: Timestamp,
    },
    /// The token was made for another node.
    #[error(
        "the bootstrap token enrolls node {token_node}, not {asked}: start the agent with \
         --node {token_node}, or ask for a token for {asked}"
    )]
    OtherNode {
        /// The node the token enrolls.
        token_node: NodeId,
        /// The node that presented it.
        asked: NodeId,
    },
}

/// Whether `node` may spend `token` (`None`: no token has the secret presented) at `now`.
pub fn check(
    token: Option<&BootstrapToken>,
    node: &NodeId,
    now: Timestamp,
) -> Result<(), EnrollRefusal> {
    let token = token.ok_or(EnrollRefusal::UnknownToken)?;
    if let Some(at) = token.spent_at {
        return Err(EnrollRefusal::Spent {
            node: token.node.clone(),
            at,
        });
    }
    if now >= token.expires_at {
        return Err(EnrollRefusal::Expired {
            node: token.node.clone(),
            at: token.expires_at,
        });
    }
    if &token.node != node {
        return Err(EnrollRefusal::OtherNode {
            token_node: token.node.clone(),
            asked: node.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn at(hour: u32) -> Timestamp {
        chrono::Utc
            .with_ymd_and_hms(2026, 1, 1, hour, 0, 0)
            .single()
            .expect("a valid time")
    }

    fn token() -> BootstrapToken {
        BootstrapToken {
            node: NodeId::new("n1".to_owned()),
            labels: Labels::new(),
            expires_at: at(2),
            spent_at: None,
        }
    }

    #[test]
    fn a_fresh_token_enrolls_its_node_only_once_and_only_in_time() {
        let n1 = NodeId::new("n1".to_owned());
        let n2 = NodeId::new("n2".to_owned());
        assert_eq!(check(Some(&token()), &n1, at(1)), Ok(()));
        assert_eq!(check(None, &n1, at(1)), Err(EnrollRefusal::UnknownToken));
        assert!(matches!(
            check(Some(&token()), &n1, at(2)),
            Err(EnrollRefusal::Expired { .. })
        ));
        assert!(matches!(
            check(Some(&token()), &n2, at(1)),
            Err(EnrollRefusal::OtherNode { .. })
        ));
        let spent = BootstrapToken {
            spent_at: Some(at(1)),
            ..token()
        };
        assert!(matches!(
            check(Some(&spent), &n1, at(1)),
            Err(EnrollRefusal::Spent { .. })
        ));
    }
}
