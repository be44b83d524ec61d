-- An action item is done once: when, by whom, with an optional comment. All three stay NULL
-- while it is open; marking it done is a compare-and-set on done_at IS NULL, audited in the
-- same transaction.
ALTER TABLE notes ADD COLUMN done_at TEXT;
ALTER TABLE notes ADD COLUMN done_by TEXT;
ALTER TABLE notes ADD COLUMN comment TEXT;
