-- API tokens made through TokenService: only the secret's sha256 is kept. Tokens given by
-- flag or file (bootstrap tokens) are never stored.
CREATE TABLE api_tokens (
    seq         INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    secret_hash TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    customer    TEXT,
    created_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    revoked_at  TEXT,
    revoked_by  TEXT
);
