-- Report signing keys are rotated: each key of the deployment signs from first_used_at until
-- a rotation retires it at retired_at (NULL for the current key, of which there is one).
-- Reports signed with a retired key stay verifiable with its public key, so no row is ever
-- deleted.
ALTER TABLE report_keys ADD COLUMN retired_at TEXT;

-- Before rotations existed the latest key was the current one; any earlier one (there is
-- none unless the table was edited by hand) ends where the next one begins.
UPDATE report_keys SET retired_at = COALESCE(
    (SELECT MIN(later.first_used_at) FROM report_keys later
     WHERE later.first_used_at > report_keys.first_used_at),
    first_used_at)
WHERE public_key <> (
    SELECT latest.public_key FROM report_keys latest
    ORDER BY latest.first_used_at DESC, latest.public_key LIMIT 1);

-- At most one current key.
CREATE UNIQUE INDEX report_keys_one_current ON report_keys ((retired_at IS NULL))
    WHERE retired_at IS NULL;
