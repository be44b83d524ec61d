-- List pages start after the last entry sent (keyset pagination): these indexes serve the
-- lists ordered by creation, newest or oldest first, with insertion order breaking ties.
CREATE INDEX releases_by_creation ON releases (created_at, seq);
CREATE INDEX runs_by_creation ON runs (created_at, seq);
CREATE INDEX waivers_by_creation ON waivers (release, created_at, seq);
