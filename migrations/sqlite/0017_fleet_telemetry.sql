-- Fleet telemetry history: what agents stream while no step runs (PushTelemetry), folded per
-- node, GPU and tier into buckets `resolution_s` seconds wide starting at `bucket_start`.
-- `fields` is JSON: field name -> [min, max, sum, samples] (the mean is sum / samples).
-- Usually one row per bucket; a sample delivered after its bucket was written adds a second
-- row for the same bucket, and readers fold such rows together. The controller deletes rows
-- past their tier's retention.
CREATE TABLE fleet_telemetry (
    node         TEXT NOT NULL,
    gpu_index    INTEGER NOT NULL,
    resolution_s INTEGER NOT NULL,
    bucket_start TEXT NOT NULL,
    fields       TEXT NOT NULL
);
CREATE INDEX fleet_telemetry_by_node ON fleet_telemetry (node, resolution_s, bucket_start);
CREATE INDEX fleet_telemetry_by_age ON fleet_telemetry (resolution_s, bucket_start);
