-- Maintenance windows: no job starts on nodes whose label `label_key` is `label_value` from
-- `starts_at` until `ends_at` (exclusive). Ending a window early moves `ends_at` to then and
-- records who did it; rows are kept for the record.
CREATE TABLE maintenance_windows (
    seq            INTEGER PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    label_key      TEXT NOT NULL,
    label_value    TEXT NOT NULL,
    starts_at      TEXT NOT NULL,
    ends_at        TEXT NOT NULL,
    reason         TEXT NOT NULL,
    created_by     TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    ended_early_by TEXT
);
CREATE INDEX maintenance_windows_by_end ON maintenance_windows (ends_at);

-- Health plans: the plan (pinned version) run on every idle node it selects each
-- `every_seconds`, against `release`. One row per plan name.
CREATE TABLE health_plans (
    plan_name     TEXT PRIMARY KEY NOT NULL,
    plan_version  TEXT NOT NULL,
    release       TEXT NOT NULL REFERENCES releases (name),
    every_seconds INTEGER NOT NULL,
    set_by        TEXT NOT NULL,
    set_at        TEXT NOT NULL,
    FOREIGN KEY (plan_name, plan_version) REFERENCES plans (name, version)
);

-- What a run is for: `qualification` (evidence for gates and reports) or `health` (a
-- periodic health check of one node, never evidence).
ALTER TABLE runs ADD COLUMN purpose TEXT NOT NULL DEFAULT 'qualification';

-- Each health check started: its run (one job, one node) and, once the run ended and the
-- node's health was judged from it, `verdict` (passed, failed, none) and `judged_at`.
CREATE TABLE health_checks (
    run_id     TEXT PRIMARY KEY NOT NULL REFERENCES runs (id),
    plan_name  TEXT NOT NULL,
    node       TEXT NOT NULL REFERENCES nodes (name),
    created_at TEXT NOT NULL,
    verdict    TEXT,
    judged_at  TEXT
);
CREATE INDEX health_checks_by_node ON health_checks (plan_name, node, created_at);
CREATE INDEX health_checks_unjudged ON health_checks (judged_at);
