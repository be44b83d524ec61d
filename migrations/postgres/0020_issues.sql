-- Issues (see migrations/sqlite/0020_issues.sql).
CREATE TABLE issues (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    signature   TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    text        TEXT NOT NULL,
    title       TEXT NOT NULL,
    severity    TEXT,
    owner       TEXT,
    tickets     TEXT NOT NULL,
    state       TEXT NOT NULL,
    fix_release TEXT,
    reason      TEXT,
    evidence    TEXT,
    opened_at   TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX issues_by_state ON issues (state);
CREATE TABLE issue_releases (
    issue_id BIGINT NOT NULL REFERENCES issues (id),
    release  TEXT NOT NULL,
    PRIMARY KEY (issue_id, release)
);
CREATE INDEX issue_releases_by_release ON issue_releases (release);
CREATE TABLE issue_nodes (
    issue_id BIGINT NOT NULL REFERENCES issues (id),
    node     TEXT NOT NULL,
    PRIMARY KEY (issue_id, node)
);
CREATE TABLE issue_history (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    issue_id   BIGINT NOT NULL REFERENCES issues (id),
    at         TIMESTAMPTZ NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    state      TEXT NOT NULL,
    detail     TEXT NOT NULL
);
CREATE INDEX issue_history_by_issue ON issue_history (issue_id, seq);
