-- Exports and logical datasets (DESIGN §3; export.proto). Owned by the
-- exporter service.
--
-- An export job is a row of `jobs` (0002) with kind 'export': its request is
-- in `params`, its progress counts in `counts`, and where a resumed run goes
-- on in `checkpoint` (search cursor, multipart upload parts, items written;
-- `checkpoint->>'worker'` names the worker that holds it, as for label jobs).
-- What an export produced is in `exports`.
--
-- A logical dataset is a named collection of immutable versions. A version
-- is a snapshot: each item copies the file's location, metadata and tags as
-- they were at export time, so later syncs, label runs or tag edits of the
-- source never change it. Items reference source files by id without a
-- foreign key, because a snapshot outlives the source rows (a re-synced or
-- deleted dataset), and one version may gather files of several datasets.

CREATE TABLE logical_datasets (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,127}$'),
    description         text NOT NULL DEFAULT '',
    -- Highest version number ever handed out; numbers are never reused, even
    -- after the newest version is deleted.
    last_version_number integer NOT NULL DEFAULT 0 CHECK (last_version_number >= 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- A version is 'building' while its export job writes items (invisible to
-- every read) and becomes 'ready', with its number, in the transaction that
-- finishes the job; a ready version never changes again.
CREATE TABLE logical_dataset_versions (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    logical_dataset_id uuid NOT NULL REFERENCES logical_datasets (id) ON DELETE CASCADE,
    number             integer CHECK (number > 0),
    name               text GENERATED ALWAYS AS ('v' || number) STORED,
    state              text NOT NULL DEFAULT 'building' CHECK (state IN ('building', 'ready')),
    description        text NOT NULL DEFAULT '',
    item_count         bigint NOT NULL DEFAULT 0 CHECK (item_count >= 0),
    -- Hex SHA-256 over "<file id>\t<etag>\n" of every item in position order.
    checksum           text NOT NULL DEFAULT '',
    export_job_id      uuid REFERENCES jobs (id) ON DELETE SET NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (logical_dataset_id, number),
    CHECK ((state = 'ready') = (number IS NOT NULL))
);
CREATE INDEX logical_dataset_versions_ready_idx
    ON logical_dataset_versions (logical_dataset_id, number DESC) WHERE state = 'ready';

CREATE TABLE logical_dataset_items (
    version_id         uuid NOT NULL REFERENCES logical_dataset_versions (id) ON DELETE CASCADE,
    -- Export order. Items carried over from the previous version by an
    -- appending export get negative positions, so they come first.
    position           bigint NOT NULL,
    file_id            uuid NOT NULL,
    dataset_id         uuid NOT NULL,
    dataset_version_id uuid NOT NULL,
    -- The storage connection to read the object with (the source dataset's).
    storage_connection text NOT NULL DEFAULT 'default',
    uri                text NOT NULL,
    bucket             text NOT NULL,
    key                text NOT NULL,
    size               bigint NOT NULL DEFAULT 0,
    etag               text NOT NULL DEFAULT '',
    last_modified      timestamptz,
    format             text,
    width              integer,
    height             integer,
    frames             integer,
    mode               text,
    -- Tags in effect at export time:
    -- [{"name", "value", "source": "ai"|"user", "confidence", "model",
    --   "definition_id", "definition_version"}]
    tags               jsonb NOT NULL DEFAULT '[]',
    -- Similarity score when the exported search had a vector query.
    score              real,
    PRIMARY KEY (version_id, position)
);
-- Diffs match items by file id, etag and tags: a file whose content or tags
-- changed shows as removed (old snapshot) and added (new snapshot).
CREATE INDEX logical_dataset_items_file_idx ON logical_dataset_items (version_id, file_id, etag);

-- Snapshots are immutable: items are only ever inserted (while their version
-- is building) and deleted with their version.
CREATE FUNCTION logical_dataset_items_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'logical dataset items are immutable snapshots';
END;
$$;
CREATE TRIGGER logical_dataset_items_no_update
    BEFORE UPDATE ON logical_dataset_items
    FOR EACH ROW EXECUTE FUNCTION logical_dataset_items_immutable();

-- What an export job writes and what it produced.
CREATE TABLE exports (
    job_id                     uuid PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    target                     text NOT NULL CHECK (target IN ('manifest', 'logical_dataset')),
    manifest_uri               text NOT NULL DEFAULT '',
    summary_uri                text NOT NULL DEFAULT '',
    manifest_sha256            text NOT NULL DEFAULT '',
    logical_dataset_id         uuid REFERENCES logical_datasets (id) ON DELETE SET NULL,
    logical_dataset_version_id uuid REFERENCES logical_dataset_versions (id) ON DELETE SET NULL
);
CREATE INDEX exports_logical_dataset_idx ON exports (logical_dataset_id);
