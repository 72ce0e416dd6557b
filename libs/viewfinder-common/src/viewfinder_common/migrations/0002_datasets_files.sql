-- The catalogue's core (DESIGN §3): datasets over a bucket prefix, their
-- versions, the files they hold, and jobs. Owned by the ingest service;
-- every other service reads these tables. Later services add their own
-- tables in later migrations.

CREATE TABLE datasets (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,127}$'),
    description         text NOT NULL DEFAULT '',
    -- The named storage connection (endpoint + credentials live in configuration).
    storage_connection  text NOT NULL DEFAULT 'default',
    bucket              text NOT NULL,
    prefix              text NOT NULL DEFAULT '',
    content_type        text NOT NULL DEFAULT 'image' CHECK (content_type = 'image'),
    -- Most files one version may hold; exceeding it fails the sync, never truncates.
    version_file_limit  integer NOT NULL DEFAULT 1000000 CHECK (version_file_limit > 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX datasets_bucket_idx ON datasets (bucket);

CREATE TABLE dataset_versions (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    dataset_id  uuid NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    number      integer NOT NULL CHECK (number > 0),
    -- "v1", "v2" … as users see them.
    name        text GENERATED ALWAYS AS ('v' || number) STORED,
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (dataset_id, number)
);

-- One row per object of a version. A file id is stable for (version, key), so
-- events, tags and vectors of one object stay keyed together; a changed object
-- keeps its id and gets a new etag.
CREATE TABLE files (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    dataset_id     uuid NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    version_id     uuid NOT NULL REFERENCES dataset_versions (id) ON DELETE CASCADE,
    bucket         text NOT NULL,
    key            text NOT NULL,
    uri            text NOT NULL,
    size           bigint NOT NULL DEFAULT 0,
    etag           text NOT NULL DEFAULT '',
    last_modified  timestamptz,
    format         text,
    width          integer,
    height         integer,
    frames         integer,
    mode           text,
    status         text NOT NULL DEFAULT 'active'
                   CHECK (status IN ('active', 'deleted', 'unsupported', 'corrupt')),
    -- Why a file is unsupported or corrupt, in words a user can act on.
    error          text,
    -- Ordering of bucket notifications already applied (S3 sequencer), so an
    -- older notification never overwrites a newer state.
    sequencer      text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (version_id, key)
);
CREATE INDEX files_version_status_idx ON files (version_id, status);
CREATE INDEX files_version_modified_idx ON files (version_id, last_modified);
CREATE INDEX files_dataset_idx ON files (dataset_id);

-- Long-running work of any service (sync, label, index, export).
CREATE TABLE jobs (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind         text NOT NULL,             -- sync | label | index | export
    mode         text NOT NULL DEFAULT 'full',
    state        text NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    dataset_id   uuid REFERENCES datasets (id) ON DELETE CASCADE,
    version_id   uuid REFERENCES dataset_versions (id) ON DELETE CASCADE,
    -- Kind-specific parameters and progress counters.
    params       jsonb NOT NULL DEFAULT '{}',
    counts       jsonb NOT NULL DEFAULT '{}',
    progress     double precision NOT NULL DEFAULT 0 CHECK (progress >= 0 AND progress <= 1),
    -- Where a resumed job continues (e.g. the last finished listing page).
    checkpoint   jsonb NOT NULL DEFAULT '{}',
    error        text,
    cancel_requested boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_kind_state_idx ON jobs (kind, state);
CREATE INDEX jobs_dataset_idx ON jobs (dataset_id);
