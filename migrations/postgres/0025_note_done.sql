-- An action item is done once (see migrations/sqlite/0025_note_done.sql): when, by whom, with
-- an optional comment; NULL while it is open.
ALTER TABLE notes ADD COLUMN done_at TIMESTAMPTZ;
ALTER TABLE notes ADD COLUMN done_by TEXT;
ALTER TABLE notes ADD COLUMN comment TEXT;
