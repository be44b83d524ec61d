-- Enrollment: one-time, expiring bootstrap tokens (the secret only as its sha256), each
-- enrolled node's labels of record (what the operator said at enroll; the agent's own labels
-- stay in nodes.reported_labels), and every client certificate issued to a node.
CREATE TABLE bootstrap_tokens (
    token_hash  TEXT PRIMARY KEY NOT NULL,
    node_name   TEXT NOT NULL,
    labels      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    spent_at    TEXT
);

CREATE TABLE node_enrollments (
    node_name   TEXT PRIMARY KEY NOT NULL,
    labels      TEXT NOT NULL,
    enrolled_at TEXT NOT NULL
);

CREATE TABLE node_certificates (
    serial      TEXT PRIMARY KEY NOT NULL,
    node_name   TEXT NOT NULL,
    issued_at   TEXT NOT NULL,
    not_after   TEXT NOT NULL,
    revoked_at  TEXT
);

CREATE INDEX node_certificates_by_node ON node_certificates (node_name);

ALTER TABLE nodes ADD COLUMN reported_labels TEXT NOT NULL DEFAULT '{}';
