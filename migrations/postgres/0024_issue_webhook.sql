-- The issue webhook's outbox (see migrations/sqlite/0024_issue_webhook.sql).
CREATE TABLE issue_webhook_outbox (
    id       BIGSERIAL PRIMARY KEY,
    issue_id BIGINT NOT NULL REFERENCES issues (id),
    event    TEXT NOT NULL,
    at       TIMESTAMPTZ NOT NULL
);
