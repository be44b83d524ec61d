-- The release components each node of a rollout was brought to: written in the same
-- transaction as the node's procedure passing (its `rollout_nodes.progress` becoming
-- `passed`). While that node's progress stays `passed` (not rolled back), an inventory it
-- reports that differs from these components is drift, shown by `rollout show`, `node list`,
-- the dashboard and `/metrics`; the latest such row of a node is the one in force.
CREATE TABLE rollout_node_components (
    rollout_id  TEXT NOT NULL REFERENCES rollouts (id),
    node        TEXT NOT NULL,
    components  TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (rollout_id, node)
) WITHOUT ROWID;
CREATE INDEX rollout_node_components_by_node ON rollout_node_components (node);
