-- Rollouts: a release moved onto a production fleet in waves. A rollout keeps the file it was
-- started from (text and sha256 digest) and its spec as validated, its waves as planned at the
-- start, and its state as `tollgate_domain::rollout::next` decided it (the phase is a column
-- of its own for lists; `version` is the compare-and-set every change applies against).
-- Each node of its waves has a row with its progress and the runs of its procedure and
-- rollback; every change writes its audit entry in the same transaction.
CREATE TABLE rollouts (
    seq         INTEGER PRIMARY KEY,
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
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX rollouts_by_phase ON rollouts (phase);
CREATE TABLE rollout_nodes (
    rollout_id      TEXT NOT NULL REFERENCES rollouts (id),
    node            TEXT NOT NULL,
    wave            BIGINT NOT NULL,
    progress        TEXT NOT NULL,
    run_id          TEXT REFERENCES runs (id),
    rollback_run_id TEXT REFERENCES runs (id),
    updated_at      TEXT NOT NULL,
    PRIMARY KEY (rollout_id, node)
) WITHOUT ROWID;
CREATE INDEX rollout_nodes_by_run ON rollout_nodes (run_id);
