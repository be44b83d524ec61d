-- Waivers, the hash-chained audit log, who promoted, halted releases and the inputs of every
-- stored decision (so a decision can be replayed).

CREATE TABLE waivers (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    release    TEXT NOT NULL REFERENCES releases (name),
    milestone  TEXT NOT NULL,
    rule_id    TEXT NOT NULL,
    reason     TEXT NOT NULL,
    ticket     TEXT NOT NULL,
    approver   TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    revoked_at TEXT,
    revoked_by TEXT,
    nodes      TEXT NOT NULL,
    skus       TEXT NOT NULL,
    steps      TEXT NOT NULL
);
CREATE INDEX waivers_by_release ON waivers (release, milestone);

-- Append-only; seq is assigned by the writer as the head's seq + 1, without gaps.
CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    at        TEXT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    subject   TEXT NOT NULL,
    release   TEXT,
    details   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX audit_by_release ON audit (release, seq);

-- The last entry of the audit log; its row is locked by every append, which serializes
-- writers and catches a deleted tail.
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

ALTER TABLE promotions ADD COLUMN actor TEXT NOT NULL DEFAULT 'anonymous';
ALTER TABLE releases ADD COLUMN halted_reason TEXT;
-- What each decision was made from (policy, evidence, waivers), as JSON, stored once per
-- distinct content: re-evaluating unchanged evidence adds a decision row, not another copy.
CREATE TABLE decision_inputs (
    hash   TEXT PRIMARY KEY,
    inputs TEXT NOT NULL
);
-- The key of the decision's inputs; NULL for decisions stored before.
ALTER TABLE decisions ADD COLUMN inputs_key TEXT REFERENCES decision_inputs (hash);
