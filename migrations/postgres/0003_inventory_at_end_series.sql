-- The inventory observed when an attempt ended (JSON, 'null' when unknown) and the per-GPU
-- downsampled telemetry series for charts (JSON).
ALTER TABLE step_results ADD COLUMN inventory_at_end TEXT NOT NULL DEFAULT 'null';
ALTER TABLE step_results ADD COLUMN series TEXT NOT NULL DEFAULT '[]';
