-- Indexes for search's DSL conditions (issue 8). Owned by search.

-- Token match on a file's directory and name (FileDir:"text", FileName:"text",
-- MetadataFilter.name_contains). Search writes it as
-- lower(<expression>) LIKE lower('%text%') over exactly these expressions
-- (viewfinder_search.domain.sql), so these trigram indexes serve it, and
-- ANALYZE keeps statistics on the expressions, which give PostgreSQL a row
-- estimate for the match: without them it guesses, whatever the text (a third
-- of the files for the strpos form used before), and the search planner picks
-- its path from that estimate. Measured at 100k files in 1,000 directories: a
-- directory match keeping 400 files read in 1.6-5 ms instead of 120 ms (every
-- key through regexp_replace); a directory that matches nothing estimated at
-- 10 rows instead of 33,333.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- The key without its last segment ("a/b" for "a/b/c.jpg").
CREATE INDEX files_directory_trgm_idx ON files
    USING gin (lower(regexp_replace(key, '/?[^/]*$', '')) gin_trgm_ops);

-- The last segment of the key.
CREATE INDEX files_name_trgm_idx ON files
    USING gin (lower(regexp_replace(key, '^.*/', '')) gin_trgm_ops);

-- A file's tag rows that are not removed, with what "HAS Tags.ai" / "HAS
-- Tags.user" test: the check of one file is one index-only probe. Without
-- it PostgreSQL 18 skip-scans (tag, file_id) across every tag name (measured
-- at 100k files: ~6 index searches and ~19 buffers per file checked).
CREATE INDEX file_tags_file_in_effect_idx ON file_tags (file_id) INCLUDE (tag, source) WHERE NOT removed;

-- Statistics on the new index expressions now, not at the next autovacuum
-- analyze (which a catalogue that rarely changes may not see for a long time).
ANALYZE files;
