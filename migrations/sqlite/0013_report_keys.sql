-- The public keys reports of this deployment are signed with, in the order they were first
-- used. Every replica checks at start that its key is the latest one here, so a deployment
-- has one signing identity.
CREATE TABLE report_keys (
    public_key    TEXT PRIMARY KEY NOT NULL,
    first_used_at TEXT NOT NULL
);
