-- Heartbeats in a narrow table of their own (see migrations/sqlite/0018_node_heartbeats.sql):
-- recording one writes a row of a few dozen bytes, not a new version of the node's wide row.
-- Every node has a row from its registration on.
CREATE TABLE node_heartbeats (
    node         TEXT PRIMARY KEY NOT NULL REFERENCES nodes (name),
    last_seen_at TIMESTAMPTZ
);
INSERT INTO node_heartbeats (node, last_seen_at) SELECT name, last_seen_at FROM nodes;
ALTER TABLE nodes DROP COLUMN last_seen_at;
-- Kept in lockstep with SQLite's index of the same name, which spares its reads of node
-- states the inventory's overflow pages.
CREATE INDEX nodes_by_name_state ON nodes (name, state);
