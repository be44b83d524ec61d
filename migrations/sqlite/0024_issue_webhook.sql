-- The issue webhook's outbox: one row per issue change, written in the change's transaction
-- while a webhook is configured (`--issue-webhook`), deleted once the receiver accepted it.
-- Its id is the event id the receiver deduplicates on; the leader delivers in id order.
CREATE TABLE issue_webhook_outbox (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    issue_id BIGINT NOT NULL REFERENCES issues (id),
    event    TEXT NOT NULL,
    at       TEXT NOT NULL
);
