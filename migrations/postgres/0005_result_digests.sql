-- The digest of each step result (hex sha256 of its canonical JSON, as read back from this
-- store), computed once when the result arrives, so a gate decision combines stored digests
-- instead of serializing every result again. NULL for results stored before this column
-- existed: those are digested when the gate is evaluated.
ALTER TABLE step_results ADD COLUMN digest TEXT;
