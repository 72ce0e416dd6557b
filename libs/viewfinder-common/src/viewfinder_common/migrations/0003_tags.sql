-- Tag definitions (versioned) and the tags of files (DESIGN §3). Owned by the
-- tagger; read by search and exporter.

CREATE TABLE tag_definitions (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL UNIQUE,
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Each edit creates a new immutable version; labels record the version they used.
CREATE TABLE tag_definition_versions (
    definition_id uuid NOT NULL REFERENCES tag_definitions (id) ON DELETE CASCADE,
    version       integer NOT NULL CHECK (version > 0),
    guide_prompt  text NOT NULL DEFAULT '',
    -- [{"name", "description", "allowed_values": [...], "group"}]
    tags          jsonb NOT NULL,
    -- [{"name", "description", "selection": "single" | "multiple"}]
    groups        jsonb NOT NULL DEFAULT '[]',
    description   text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (definition_id, version)
);

-- One row per (file, tag, source). `ai` rows are rewritten by label runs;
-- `user` rows are people's decisions and never overwritten by a run: a user
-- row with removed = true hides the AI tag of the same name.
CREATE TABLE file_tags (
    file_id            uuid NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    tag                text NOT NULL,
    source             text NOT NULL CHECK (source IN ('ai', 'user')),
    value              text NOT NULL DEFAULT '',
    confidence         real CHECK (confidence IS NULL OR (confidence >= 0 AND confidence <= 1)),
    model              text,
    definition_id      uuid REFERENCES tag_definitions (id) ON DELETE SET NULL,
    definition_version integer,
    -- Content the AI tag was computed from; a changed etag makes it stale.
    etag               text NOT NULL DEFAULT '',
    removed            boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (file_id, tag, source)
);
CREATE INDEX file_tags_tag_idx ON file_tags (tag, source) WHERE NOT removed;

-- Which files a definition version has labeled (also files that got no tag),
-- so incremental jobs skip finished files and resumed jobs never re-call the model.
CREATE TABLE file_label_runs (
    file_id            uuid NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    definition_id      uuid NOT NULL REFERENCES tag_definitions (id) ON DELETE CASCADE,
    definition_version integer NOT NULL,
    etag               text NOT NULL,
    model              text NOT NULL,
    labeled_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (file_id, definition_id, definition_version)
);
