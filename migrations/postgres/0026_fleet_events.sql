-- GPU events agents report outside steps (see migrations/sqlite/0026_fleet_events.sql).
CREATE TABLE fleet_events (
    seq       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    node      TEXT NOT NULL,
    gpu_index BIGINT NOT NULL,
    gpu_uuid  TEXT NOT NULL,
    kind      TEXT NOT NULL,
    code      BIGINT NOT NULL,
    at        TIMESTAMPTZ NOT NULL,
    detail    TEXT NOT NULL
);
CREATE INDEX fleet_events_by_node ON fleet_events (node, at);
CREATE INDEX fleet_events_by_age ON fleet_events (at);
