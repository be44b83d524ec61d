-- The plan of record of a release (see migrations/sqlite/0019_release_plan_of_record.sql):
-- a target date per milestone (YYYY-MM-DD, as SQLite keeps it), as last set, and the
-- customers the release is for.
CREATE TABLE milestone_targets (
    release   TEXT NOT NULL REFERENCES releases (name),
    milestone TEXT NOT NULL,
    target    TEXT NOT NULL,
    reason    TEXT,
    set_by    TEXT NOT NULL,
    set_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (release, milestone)
);
CREATE TABLE release_customers (
    release  TEXT NOT NULL REFERENCES releases (name),
    customer TEXT NOT NULL,
    PRIMARY KEY (release, customer)
);
