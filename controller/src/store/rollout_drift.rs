//! What rollouts brought their nodes to (`rollout_node_components`, migration 0027): written
//! by [`Store::apply_rollout_change`] in the transaction where a node's procedure passes, read
//! for the nodes whose progress in that rollout is still `passed` (a node rolled back is
//! expected to run the previous release, not this one).

use super::{Pool, Store, StoreError, rows};
use tollgate_domain::release::Component;
use tollgate_domain::rollout::NodeProgress;
use tollgate_domain::rollout::drift::Expected;
use tollgate_domain::{NodeId, RolloutId};

/// Records the components of rollout `$1`'s release as what node `$2` was brought to, at `$3`.
pub(super) const RECORD: &str =
    "INSERT INTO rollout_node_components (rollout_id, node, components, recorded_at)
     SELECT ro.id, $2, r.components, $3
     FROM rollouts ro JOIN releases r ON r.name = ro.release
     WHERE ro.id = $1
     ON CONFLICT (rollout_id, node)
     DO UPDATE SET components = excluded.components, recorded_at = excluded.recorded_at";

impl Store {
    /// What each rollout brought each of its nodes to, for the nodes whose procedure passed
    /// and that were not rolled back since; older rollouts first.
    pub async fn rollout_expectations(&self) -> Result<Vec<Expected>, StoreError> {
        const SQL: &str = "SELECT c.rollout_id, c.node, c.components, c.recorded_at
             FROM rollout_node_components c
             JOIN rollout_nodes n ON n.rollout_id = c.rollout_id AND n.node = c.node
             JOIN rollouts ro ON ro.id = c.rollout_id
             WHERE n.progress = $1
             ORDER BY ro.seq, c.node";
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(NodeProgress::Passed.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    let f =
                        rows::Fields::new(row, "rollout_node_components", &["rollout_id", "node"]);
                    Ok(Expected {
                        rollout: RolloutId::from(f.text("rollout_id")?),
                        node: NodeId::from(f.text("node")?),
                        components: f.json::<Vec<Component>>("components")?,
                        recorded_at: f.time("recorded_at")?,
                    })
                })
                .collect()
        })
    }
}
