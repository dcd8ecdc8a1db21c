-- A job's install policy: `immediate` (flash once downloaded and checked)
-- or `when-safe` (download now, flash at a safe moment the device judges:
-- a vehicle parked with its engine off). Signed into every command's
-- manifest (format 3).
ALTER TABLE jobs ADD COLUMN install TEXT NOT NULL DEFAULT 'immediate'
    CHECK (install IN ('immediate', 'when-safe'));
