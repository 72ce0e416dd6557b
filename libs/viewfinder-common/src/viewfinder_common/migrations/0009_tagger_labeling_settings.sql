-- Per-dataset automatic labeling (Dataset.labeling in dataset.proto). Owned by
-- the tagger, which reads it for every file-discovered event; DatasetService
-- (ingest) writes it when a dataset is created or its `labeling` field is
-- updated. No row means automatic labeling is off.
CREATE TABLE dataset_labeling_settings (
    dataset_id         uuid PRIMARY KEY REFERENCES datasets (id) ON DELETE CASCADE,
    automatic          boolean NOT NULL DEFAULT false,
    -- NULL while no definition is chosen; automatic labeling then does nothing.
    definition_id      uuid REFERENCES tag_definitions (id) ON DELETE SET NULL,
    -- 0 means the definition's latest version at labeling time.
    definition_version integer NOT NULL DEFAULT 0 CHECK (definition_version >= 0),
    -- Name of the labeling model connection; '' means the tagger's default.
    model_connection   text NOT NULL DEFAULT '',
    updated_at         timestamptz NOT NULL DEFAULT now()
);
