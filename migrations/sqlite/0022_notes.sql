-- Meeting minutes: notes about a release, each optionally an action item with an owner and a
-- due date (YYYY-MM-DD). Every note is also in the audit log, written in the same transaction.
CREATE TABLE notes (
    id           INTEGER PRIMARY KEY,
    release      TEXT NOT NULL REFERENCES releases (name),
    text         TEXT NOT NULL,
    action_owner TEXT,
    due          TEXT,
    author       TEXT NOT NULL,
    at           TEXT NOT NULL
);
CREATE INDEX notes_by_release ON notes (release, at);
CREATE INDEX notes_by_time ON notes (at);
