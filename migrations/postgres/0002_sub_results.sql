-- Per-test results read by result parsers (dcgmi diag, JUnit), as JSON.
ALTER TABLE step_results ADD COLUMN sub_results TEXT NOT NULL DEFAULT '[]';
