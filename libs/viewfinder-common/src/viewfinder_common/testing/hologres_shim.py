"""A contract shim of Hologres' Proxima SQL surface, installed into a real PostgreSQL database.

Hologres cannot run on this machine, but it speaks the PostgreSQL protocol and
its vector search is a handful of documented SQL objects. ``install`` creates
them in a (test) PostgreSQL database so that the Hologres adapter runs its real
statements over the real wire protocol against a real SQL engine, and every
Hologres-specific call is checked against the vendor's documentation
("Proxima Graph indexes",
alibabacloud.com/help/en/hologres/user-guide/guide-on-vector-processing):

* ``CALL set_table_property(table, key, value)`` — a procedure that rejects
  unknown property keys; rejects ``orientation`` / ``clustering_key`` /
  ``distribution_key`` / ``segment_key`` / ``table_group`` / ``shard_count``
  outside the transaction that created the table (Hologres only accepts them
  there); checks that clustering / distribution / segment key columns exist;
  and for ``proxima_vectors`` requires a JSON object whose keys are ``float4[]``
  columns with ``CHECK (array_ndims(col) = 1 AND array_length(col, 1) = n)``,
  whose values have ``algorithm`` ``Graph``, a ``distance_method`` of
  ``SquaredEuclidean`` / ``Euclidean`` / ``InnerProduct``, only the documented
  ``builder_params`` keys (positive integers) and no other keys, on a table
  that is not row-oriented. Accepted properties are recorded in
  ``hologres.hg_table_properties`` (table_namespace, table_name,
  property_key, property_value), where Hologres exposes them;
* ``pm_squared_euclidean_distance`` / ``pm_euclidean_distance`` /
  ``pm_inner_product_distance`` and their ``pm_approx_`` twins
  ``(float4[], float4[]) -> float4``, which reject arrays of different sizes
  with Hologres' own message ("The size of two arrays must be the same in
  DistanceFunction, …") and non-one-dimensional arrays. The approximate
  functions compute the exact distance: PostgreSQL has no Proxima graph, so
  the shim cannot reproduce the index's losses (the adapter's fallback for a
  short answer is tested on its own).

What the shim cannot check: that Hologres really uses the index for a given
query (the vendor: only single-table queries ordering ``pm_approx_*``
ascending for Euclidean methods, with a constant second argument); the
column-store engine itself; and the Proxima extension's installation
(``CREATE EXTENSION proxima``), which the adapter detects through the
functions' presence in ``pg_proc``.
"""

from __future__ import annotations

from typing import Any, Final

SHIM_SQL: Final = r"""
CREATE SCHEMA IF NOT EXISTS hologres;

CREATE TABLE IF NOT EXISTS hologres.hg_table_properties (
    table_namespace text NOT NULL,
    table_name      text NOT NULL,
    property_key    text NOT NULL,
    property_value  text NOT NULL,
    PRIMARY KEY (table_namespace, table_name, property_key)
);

CREATE OR REPLACE FUNCTION hologres._shim_check_column(rel regclass, column_name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = rel AND attname = column_name AND attnum > 0 AND NOT attisdropped
    ) THEN
        RAISE EXCEPTION 'column "%" does not exist in table %', column_name, rel USING ERRCODE = '42703';
    END IF;
END $$;

CREATE OR REPLACE PROCEDURE set_table_property(target_table text, key text, value text)
LANGUAGE plpgsql AS $$
DECLARE
    rel regclass := to_regclass(target_table);
    created_here boolean;
    spec jsonb;
    vector_column text;
    entry jsonb;
    entry_key text;
    builder_key text;
    checks text;
    orientation text;
    key_column text;
BEGIN
    IF rel IS NULL THEN
        RAISE EXCEPTION 'relation "%" does not exist', target_table USING ERRCODE = '42P01';
    END IF;
    IF key NOT IN (
        'orientation', 'clustering_key', 'segment_key', 'event_time_column', 'bitmap_columns',
        'dictionary_encoding_columns', 'distribution_key', 'time_to_live_in_seconds', 'table_group',
        'shard_count', 'proxima_vectors', 'binlog.level', 'binlog.ttl', 'storage_mode'
    ) THEN
        RAISE EXCEPTION 'unsupported table property "%"', key USING ERRCODE = '22023';
    END IF;

    -- Hologres accepts these only in the transaction that creates the table.
    SELECT (xmin::text::bigint = txid_current() % 4294967296) INTO created_here
    FROM pg_class WHERE oid = rel;
    IF key IN ('orientation', 'clustering_key', 'distribution_key', 'segment_key',
                        'event_time_column', 'table_group', 'shard_count')
       AND NOT created_here THEN
        RAISE EXCEPTION 'table property "%" can only be set in the transaction that creates table %',
            key, rel USING ERRCODE = '55000';
    END IF;

    IF key = 'orientation' AND value NOT IN ('column', 'row', 'row,column', 'column,row') THEN
        RAISE EXCEPTION 'invalid orientation "%"', value USING ERRCODE = '22023';
    END IF;

    IF key IN ('clustering_key', 'distribution_key', 'segment_key', 'event_time_column',
                        'bitmap_columns', 'dictionary_encoding_columns') THEN
        FOREACH key_column IN ARRAY string_to_array(value, ',') LOOP
            PERFORM hologres._shim_check_column(rel, split_part(trim(key_column), ':', 1));
        END LOOP;
    END IF;

    IF key = 'proxima_vectors' THEN
        BEGIN
            spec := value::jsonb;
        EXCEPTION WHEN others THEN
            RAISE EXCEPTION 'proxima_vectors is not valid JSON: %', value USING ERRCODE = '22023';
        END;
        IF jsonb_typeof(spec) <> 'object' OR spec = '{}'::jsonb THEN
            RAISE EXCEPTION 'proxima_vectors must be a non-empty JSON object' USING ERRCODE = '22023';
        END IF;
        SELECT p.property_value INTO orientation FROM hologres.hg_table_properties p
        WHERE p.table_namespace = (SELECT nspname FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid
                                   WHERE c.oid = rel)
          AND p.table_name = (SELECT relname FROM pg_class WHERE oid = rel) AND p.property_key = 'orientation';
        IF orientation = 'row' THEN
            RAISE EXCEPTION 'vector indexes are not supported on row-oriented tables' USING ERRCODE = '0A000';
        END IF;
        SELECT string_agg(pg_get_constraintdef(oid), ' ') INTO checks
        FROM pg_constraint WHERE conrelid = rel AND contype = 'c';
        FOR vector_column, entry IN SELECT * FROM jsonb_each(spec) LOOP
            PERFORM hologres._shim_check_column(rel, vector_column);
            IF (SELECT atttypid FROM pg_attribute WHERE attrelid = rel AND attname = vector_column)
               <> 'real[]'::regtype THEN
                RAISE EXCEPTION 'vector column "%" must be FLOAT4[]', vector_column USING ERRCODE = '42804';
            END IF;
            IF coalesce(checks, '') !~ ('array_ndims\(' || quote_ident(vector_column) || '\) = 1')
               OR coalesce(checks, '') !~ ('array_length\(' || quote_ident(vector_column) || ', 1\) = \d+') THEN
                RAISE EXCEPTION 'vector column "%" needs CHECK (array_ndims(%) = 1 AND array_length(%, 1) = <dim>)',
                    vector_column, vector_column, vector_column USING ERRCODE = '23514';
            END IF;
            IF jsonb_typeof(entry) <> 'object' THEN
                RAISE EXCEPTION 'proxima_vectors entry of "%" must be an object', vector_column USING ERRCODE = '22023';
            END IF;
            FOR entry_key IN SELECT jsonb_object_keys(entry) LOOP
                IF entry_key NOT IN ('algorithm', 'distance_method', 'builder_params', 'searcher_init_params',
                                     'proxima_builder_thread_count') THEN
                    RAISE EXCEPTION 'unknown proxima_vectors parameter "%" for "%"', entry_key, vector_column
                        USING ERRCODE = '22023';
                END IF;
            END LOOP;
            IF entry->>'algorithm' IS DISTINCT FROM 'Graph' THEN
                RAISE EXCEPTION 'proxima algorithm must be Graph, got %', entry->>'algorithm' USING ERRCODE = '22023';
            END IF;
            IF entry->>'distance_method' IS NULL
               OR entry->>'distance_method' NOT IN ('SquaredEuclidean', 'Euclidean', 'InnerProduct') THEN
                RAISE EXCEPTION 'proxima distance_method must be SquaredEuclidean, Euclidean or InnerProduct, got %',
                    entry->>'distance_method' USING ERRCODE = '22023';
            END IF;
            IF entry ? 'builder_params' THEN
                IF jsonb_typeof(entry->'builder_params') <> 'object' THEN
                    RAISE EXCEPTION 'builder_params must be an object' USING ERRCODE = '22023';
                END IF;
                FOR builder_key IN SELECT jsonb_object_keys(entry->'builder_params') LOOP
                    IF builder_key NOT IN ('min_flush_proxima_row_count', 'min_compaction_proxima_row_count',
                                           'max_total_size_to_merge_mb') THEN
                        RAISE EXCEPTION 'unknown builder_params key "%"', builder_key USING ERRCODE = '22023';
                    END IF;
                    IF jsonb_typeof(entry->'builder_params'->builder_key) <> 'number'
                       OR (entry->'builder_params'->>builder_key)::numeric <= 0
                       OR (entry->'builder_params'->>builder_key)::numeric
                          <> trunc((entry->'builder_params'->>builder_key)::numeric) THEN
                        RAISE EXCEPTION 'builder_params "%" must be a positive integer', builder_key
                            USING ERRCODE = '22023';
                    END IF;
                END LOOP;
            END IF;
        END LOOP;
    END IF;

    INSERT INTO hologres.hg_table_properties (table_namespace, table_name, property_key, property_value)
    SELECT n.nspname, c.relname, key, value
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel
    ON CONFLICT (table_namespace, table_name, property_key) DO UPDATE SET property_value = EXCLUDED.property_value;
END $$;

CREATE OR REPLACE FUNCTION hologres._shim_check_sizes(a real[], b real[]) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF array_ndims(a) <> 1 OR array_ndims(b) <> 1 THEN
        RAISE EXCEPTION 'DistanceFunction takes one-dimensional arrays' USING ERRCODE = '22023';
    END IF;
    IF cardinality(a) <> cardinality(b) THEN
        RAISE EXCEPTION 'The size of two arrays must be the same in DistanceFunction, size of left array: %, size of right array: %',
            cardinality(a), cardinality(b) USING ERRCODE = '22023';
    END IF;
END $$;
"""

_DISTANCES: Final = {
    "squared_euclidean": "sum((x::float8 - y::float8) * (x::float8 - y::float8))",
    "euclidean": "sqrt(sum((x::float8 - y::float8) * (x::float8 - y::float8)))",
    "inner_product": "sum(x::float8 * y::float8)",
}


_FUNCTION_TEMPLATE: Final = """
CREATE OR REPLACE FUNCTION @name@(a real[], b real[]) RETURNS real
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    PERFORM hologres._shim_check_sizes(a, b);
    RETURN (SELECT @expression@ FROM unnest(a, b) AS t(x, y))::real;
END $$;"""


def _distance_functions_sql() -> str:
    """Each distance function, exact (``pm_``) and approximate (``pm_approx_``)."""
    return "\n".join(
        _FUNCTION_TEMPLATE.replace("@name@", f"{prefix}{name}_distance").replace("@expression@", expression)
        for name, expression in _DISTANCES.items()
        for prefix in ("pm_", "pm_approx_")
    )


async def install(conn: Any) -> None:
    """Creates the shim in the connected (test) database: ``conn`` is an asyncpg connection."""
    await conn.execute(SHIM_SQL + _distance_functions_sql())
