-- What the ingest service needs beyond the core schema (0002). Additive only;
-- "IF NOT EXISTS" everywhere so that a column another migration happens to
-- add as well does not break either of them.

-- Dataset.indexing of dataset.proto (IndexingSettings in its proto JSON form,
-- field names as in the proto). Dataset.labeling lives in the tagger's
-- dataset_labeling_settings table (0009), which ingest writes.
ALTER TABLE datasets ADD COLUMN IF NOT EXISTS indexing jsonb NOT NULL DEFAULT '{}';

-- When a version's files last changed (DatasetVersion.update_time); bumped
-- once per written batch, not per file.
ALTER TABLE dataset_versions ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();

-- Job fields every job kind shares (common.proto Job): how often it was
-- resumed, a bounded sample of item failures (newest first), and the W3C
-- trace id its events carry.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS resume_count integer NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS recent_errors jsonb NOT NULL DEFAULT '[]';
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS trace_id text;

-- At most one pending or running sync per version: StartSync answers
-- FAILED_PRECONDITION instead of racing a second listing of the same prefix.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_active_sync_per_version_idx
    ON jobs (version_id) WHERE kind = 'sync' AND state IN ('pending', 'running');

-- Sync compares each listing page with the catalogue rows of the same key
-- range, in the byte order S3 lists keys in; the UNIQUE (version_id, key)
-- index follows the database collation, which need not be byte order.
CREATE INDEX IF NOT EXISTS files_version_key_bytes_idx ON files (version_id, key COLLATE "C");
