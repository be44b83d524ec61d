-- The plan of record of a release: a target date per milestone (the last one set, with who
-- set it and why; every change is also in the audit log, with the date it moved from), and
-- the customers the release is for.
CREATE TABLE milestone_targets (
    release   TEXT NOT NULL REFERENCES releases (name),
    milestone TEXT NOT NULL,
    target    TEXT NOT NULL,
    reason    TEXT,
    set_by    TEXT NOT NULL,
    set_at    TEXT NOT NULL,
    PRIMARY KEY (release, milestone)
) WITHOUT ROWID;
CREATE TABLE release_customers (
    release  TEXT NOT NULL REFERENCES releases (name),
    customer TEXT NOT NULL,
    PRIMARY KEY (release, customer)
) WITHOUT ROWID;
