-- Rollouts (see migrations/sqlite/0023_rollouts.sql).
CREATE TABLE rollouts (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    release     TEXT NOT NULL REFERENCES releases (name),
    fleet       TEXT NOT NULL,
    file        TEXT NOT NULL,
    digest      TEXT NOT NULL,
    spec        TEXT NOT NULL,
    waves       TEXT NOT NULL,
    phase       TEXT NOT NULL,
    wave        BIGINT NOT NULL,
    state       TEXT NOT NULL,
    version     BIGINT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX rollouts_by_phase ON rollouts (phase);
CREATE TABLE rollout_nodes (
    rollout_id      TEXT NOT NULL REFERENCES rollouts (id),
    node            TEXT NOT NULL,
    wave            BIGINT NOT NULL,
    progress        TEXT NOT NULL,
    run_id          TEXT REFERENCES runs (id),
    rollback_run_id TEXT REFERENCES runs (id),
    updated_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (rollout_id, node)
);
CREATE INDEX rollout_nodes_by_run ON rollout_nodes (run_id);
