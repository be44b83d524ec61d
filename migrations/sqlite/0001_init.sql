-- Tollgate schema, SQLite flavour. Keep in lockstep with migrations/postgres/0001_init.sql:
-- same tables, columns and meaning; only the types differ.
--
-- Types: JSON documents are TEXT (serde_json of the domain types); timestamps are TEXT in
-- RFC 3339 with a fixed "+00:00" offset, which sorts in time order; enum values are the
-- domain types' storage names. `seq INTEGER PRIMARY KEY` is SQLite's row id: it orders rows
-- by insertion where two rows carry the same timestamp.

CREATE TABLE nodes (
    name          TEXT PRIMARY KEY NOT NULL,
    labels        TEXT NOT NULL,
    inventory     TEXT NOT NULL,
    gpu_source    TEXT NOT NULL,
    state         TEXT NOT NULL,
    health        TEXT NOT NULL,
    token_hash    TEXT NOT NULL,
    last_seen_at  TEXT,
    registered_at TEXT NOT NULL
);

CREATE TABLE releases (
    seq         INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    components  TEXT NOT NULL,
    milestone   TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE promotions (
    seq             INTEGER PRIMARY KEY,
    release         TEXT NOT NULL REFERENCES releases (name),
    from_milestone  TEXT NOT NULL,
    to_milestone    TEXT NOT NULL,
    promoted_at     TEXT NOT NULL,
    decision_digest TEXT NOT NULL
);
CREATE INDEX promotions_by_release ON promotions (release, promoted_at);

CREATE TABLE plans (
    seq        INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    version    TEXT NOT NULL,
    spec       TEXT NOT NULL,
    source     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    UNIQUE (name, version)
);

CREATE TABLE gates (
    seq        INTEGER PRIMARY KEY,
    milestone  TEXT NOT NULL,
    version    TEXT NOT NULL,
    policy     TEXT NOT NULL,
    source     TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX gates_by_milestone ON gates (milestone, created_at);

CREATE TABLE runs (
    seq          INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    release      TEXT NOT NULL REFERENCES releases (name),
    plan_name    TEXT NOT NULL,
    plan_version TEXT NOT NULL,
    milestone    TEXT NOT NULL,
    state        TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    finished_at  TEXT,
    FOREIGN KEY (plan_name, plan_version) REFERENCES plans (name, version)
);
CREATE INDEX runs_by_release ON runs (release, milestone, plan_name, created_at);

CREATE TABLE jobs (
    id          TEXT PRIMARY KEY NOT NULL,
    run_id      TEXT NOT NULL REFERENCES runs (id),
    node        TEXT NOT NULL REFERENCES nodes (name),
    state       TEXT NOT NULL,
    lease_epoch INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX jobs_by_state ON jobs (state, created_at);
CREATE INDEX jobs_by_node ON jobs (node, state);
CREATE INDEX jobs_by_run ON jobs (run_id, node);

CREATE TABLE step_results (
    seq          INTEGER PRIMARY KEY,
    job_id       TEXT NOT NULL REFERENCES jobs (id),
    step_index   INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    lease_epoch  INTEGER NOT NULL,
    step_name    TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    exit_code    INTEGER,
    started_at   TEXT NOT NULL,
    finished_at  TEXT NOT NULL,
    measurements TEXT NOT NULL,
    telemetry    TEXT NOT NULL,
    events       TEXT NOT NULL,
    inventory    TEXT NOT NULL,
    log_tail     TEXT NOT NULL,
    message      TEXT NOT NULL,
    recorded_at  TEXT NOT NULL,
    UNIQUE (job_id, step_index, attempt, lease_epoch)
);

CREATE TABLE decisions (
    seq            INTEGER PRIMARY KEY,
    release        TEXT NOT NULL REFERENCES releases (name),
    milestone      TEXT NOT NULL,
    verdict        TEXT NOT NULL,
    digest         TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    decision       TEXT NOT NULL,
    evaluated_at   TEXT NOT NULL
);
CREATE INDEX decisions_by_release ON decisions (release, milestone, evaluated_at);
