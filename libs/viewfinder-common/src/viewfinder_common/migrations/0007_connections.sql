-- Named connections to model services and vector databases (issue 7,
-- DESIGN §4). Datasets pick them by name for labeling and indexing.
-- A secret is either encrypted at rest (Fernet, key from configuration) or a
-- reference to where the deployment keeps it ("env:NAME",
-- "k8s-secret:name/key"); never both, and never stored in clear.

CREATE TABLE connections (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name               text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,127}$'),
    kind               text NOT NULL,
    description        text NOT NULL DEFAULT '',
    -- Kind-specific, secret-free settings (uri, model, database, user …).
    config             jsonb NOT NULL DEFAULT '{}'::jsonb,
    secret_ciphertext  bytea,
    secret_reference   text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (secret_ciphertext IS NULL OR secret_reference IS NULL)
);
CREATE INDEX connections_kind_idx ON connections (kind);
