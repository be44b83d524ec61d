-- Job-level retries: a job started again on another node (its plan's `reschedule`, or a drain
-- deadline) is a new row of the same run naming the job it replaces; the unique index lets a
-- job be replaced once, whichever replica decides it. `attempt` counts from 1.
ALTER TABLE jobs ADD COLUMN attempt BIGINT NOT NULL DEFAULT 1;
ALTER TABLE jobs ADD COLUMN rescheduled_from TEXT REFERENCES jobs (id);
ALTER TABLE jobs ADD COLUMN reschedule_cause TEXT;
CREATE UNIQUE INDEX jobs_by_rescheduled_from ON jobs (rescheduled_from);

-- `tollgate node drain NODE --deadline D`: when the running job is cancelled (and rescheduled)
-- if it has not ended; NULL for no deadline.
ALTER TABLE nodes ADD COLUMN drain_deadline TIMESTAMPTZ;
