-- Issues: failures that share a signature (rule kind + failure group signature), tracked
-- across runs and releases until closed. The state is its name plus the fix release
-- (fix-in-release, verifying, closed) or the won't-fix reason; releases and nodes are where it
-- failed; every change is in issue_history and the audit log, written in one transaction.
CREATE TABLE issues (
    id          INTEGER PRIMARY KEY,
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
    opened_at   TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX issues_by_state ON issues (state);
CREATE TABLE issue_releases (
    issue_id BIGINT NOT NULL REFERENCES issues (id),
    release  TEXT NOT NULL,
    PRIMARY KEY (issue_id, release)
) WITHOUT ROWID;
CREATE INDEX issue_releases_by_release ON issue_releases (release);
CREATE TABLE issue_nodes (
    issue_id BIGINT NOT NULL REFERENCES issues (id),
    node     TEXT NOT NULL,
    PRIMARY KEY (issue_id, node)
) WITHOUT ROWID;
CREATE TABLE issue_history (
    seq        INTEGER PRIMARY KEY,
    issue_id   BIGINT NOT NULL REFERENCES issues (id),
    at         TEXT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    state      TEXT NOT NULL,
    detail     TEXT NOT NULL
);
CREATE INDEX issue_history_by_issue ON issue_history (issue_id, seq);
