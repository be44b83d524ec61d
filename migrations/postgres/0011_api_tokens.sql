-- API tokens made through TokenService: only the secret's sha256 is kept. Tokens given by
-- flag or file (bootstrap tokens) are never stored.
CREATE TABLE api_tokens (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    secret_hash TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    customer    TEXT,
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    revoked_at  TIMESTAMPTZ,
    revoked_by  TEXT
);
