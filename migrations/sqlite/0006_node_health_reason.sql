-- Why a node has its health: the finding that set it (a GPU lost, a failed health check,
-- repeated harness errors) or the reason an operator gave. Empty for nodes that were never
-- anything but good.
ALTER TABLE nodes ADD COLUMN health_reason TEXT NOT NULL DEFAULT '';
