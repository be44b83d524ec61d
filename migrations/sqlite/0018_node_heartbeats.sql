-- Heartbeats in a narrow table of their own. A `nodes` row carries the node's inventory
-- (several KiB for eight GPUs, in overflow pages), so recording a heartbeat there rewrote a
-- wide row on every heartbeat flush; here it rewrites a row of a few dozen bytes. Every node
-- has a row from its registration on.
CREATE TABLE node_heartbeats (
    node         TEXT PRIMARY KEY NOT NULL REFERENCES nodes (name),
    last_seen_at TEXT
) WITHOUT ROWID;
INSERT INTO node_heartbeats (node, last_seen_at) SELECT name, last_seen_at FROM nodes;
ALTER TABLE nodes DROP COLUMN last_seen_at;
-- The lease watchdog and every heartbeat flush read nodes' states: from this index, never
-- reaching past the inventory into a row's overflow pages (`state` follows `inventory`).
CREATE INDEX nodes_by_name_state ON nodes (name, state);
