-- The release components each node of a rollout was brought to (see
-- migrations/sqlite/0027_rollout_node_components.sql).
CREATE TABLE rollout_node_components (
    rollout_id  TEXT NOT NULL REFERENCES rollouts (id),
    node        TEXT NOT NULL,
    components  TEXT NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (rollout_id, node)
);
CREATE INDEX rollout_node_components_by_node ON rollout_node_components (node);
