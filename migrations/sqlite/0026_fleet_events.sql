-- GPU events agents report outside steps (PushTelemetry): XIDs, uncorrected ECC errors, lost
-- GPUs, as the agent saw them (`at` is the agent's time). A rollout's health rules judge a
-- wave's nodes on them while the wave soaks. Only inserted; the controller deletes rows older
-- than the fleet telemetry history's longest retention.
CREATE TABLE fleet_events (
    seq       INTEGER PRIMARY KEY,
    node      TEXT NOT NULL,
    gpu_index INTEGER NOT NULL,
    gpu_uuid  TEXT NOT NULL,
    kind      TEXT NOT NULL,
    code      BIGINT NOT NULL,
    at        TEXT NOT NULL,
    detail    TEXT NOT NULL
);
CREATE INDEX fleet_events_by_node ON fleet_events (node, at);
CREATE INDEX fleet_events_by_age ON fleet_events (at);
