-- Meeting minutes (see migrations/sqlite/0022_notes.sql): notes about a release, each
-- optionally an action item with an owner and a due date (YYYY-MM-DD).
CREATE TABLE notes (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    release      TEXT NOT NULL REFERENCES releases (name),
    text         TEXT NOT NULL,
    action_owner TEXT,
    due          TEXT,
    author       TEXT NOT NULL,
    at           TIMESTAMPTZ NOT NULL
);
CREATE INDEX notes_by_release ON notes (release, at);
CREATE INDEX notes_by_time ON notes (at);
