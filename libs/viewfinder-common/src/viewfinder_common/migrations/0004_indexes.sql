-- The embedder's registry of vector indexes (DESIGN §3, embedding.proto) and
-- its record of what each index holds. Owned by the embedder service; search
-- reads embedding_indexes to find a dataset's active index and its fields.
--
-- The vectors themselves live in the vector store (a vf_index_<name> table in
-- pgvector or a collection in Milvus); these tables are the catalogue's side.

CREATE TABLE embedding_indexes (
    -- Also the vector store's table / collection suffix (vf_index_<name>).
    name                    text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,47}$'),
    dataset_id              uuid NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    -- Named model connection that embeds into this index (e.g. 'offline').
    model_connection        text NOT NULL,
    -- The model's identity when the index was created; vectors of another
    -- model or version are not comparable, so the embedder refuses to mix them.
    model_id                text NOT NULL,
    model_version           text NOT NULL,
    -- Vector store holding the rows: 'pgvector' or 'milvus' (a connection name).
    vector_store_connection text NOT NULL,
    -- [{"name": "visual", "dimension": 1280, "metric": "cosine", "query_kinds": ["image"]}, ...]
    vector_fields           jsonb NOT NULL CHECK (jsonb_typeof(vector_fields) = 'array'),
    -- building: an index job is filling it; ready: usable; failed: its last job failed.
    state                   text NOT NULL DEFAULT 'ready' CHECK (state IN ('building', 'ready', 'failed')),
    -- The index search uses for the dataset, and the one the pipeline writes new files to.
    active                  boolean NOT NULL DEFAULT false,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX embedding_indexes_dataset_idx ON embedding_indexes (dataset_id);
-- At most one active index per dataset.
CREATE UNIQUE INDEX embedding_indexes_one_active_idx ON embedding_indexes (dataset_id) WHERE active;

-- One row per (index, file) whose vectors are in the vector store, with the
-- content ETag and model version they were computed from: the idempotency key
-- of the pipeline (a redelivered event with the same etag is not re-embedded)
-- and the "already current" test of incremental index jobs.
CREATE TABLE embedding_index_files (
    index_name          text NOT NULL REFERENCES embedding_indexes (name) ON DELETE CASCADE,
    -- No foreign key to files: a vector may briefly outlive its catalogue row
    -- (the DELETE event removes both sides).
    file_id             uuid NOT NULL,
    dataset_version_id  uuid NOT NULL,
    etag                text NOT NULL,
    model_version       text NOT NULL,
    -- Index job that wrote the vectors last; NULL when the pipeline did.
    job_id              uuid,
    embedded_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (index_name, file_id)
);
CREATE INDEX embedding_index_files_version_idx ON embedding_index_files (index_name, dataset_version_id);
CREATE INDEX embedding_index_files_job_idx ON embedding_index_files (job_id) WHERE job_id IS NOT NULL;

-- Job fields the index jobs need beyond 0002 (the same columns other services
-- add; IF NOT EXISTS keeps every order of these migrations valid).
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS resume_count integer NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS recent_errors jsonb NOT NULL DEFAULT '[]';
-- The worker claims index jobs in creation order.
CREATE INDEX IF NOT EXISTS jobs_index_pending_idx ON jobs (created_at) WHERE kind = 'index' AND state = 'pending';
