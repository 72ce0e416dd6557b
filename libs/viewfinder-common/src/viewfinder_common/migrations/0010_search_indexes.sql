-- Indexes that let search answer its catalogue reads from indexes alone
-- (DESIGN §1, issue 8). Owned by search. Measured on 100k files before them
-- (bench/search): the candidate read of a 10 % tag filter sequentially scanned
-- files and took ~20 ms; with them it merges two index-only scans in ~2-5 ms,
-- and the check of a vector result (40 ids) probes them without the heap.

-- A named tag's files in file id order, with the columns tag conditions test:
-- semi-joins on a tag become index-only scans that merge with the files below.
CREATE INDEX file_tags_tag_file_idx ON file_tags (tag, file_id) INCLUDE (source, value) WHERE NOT removed;

-- The active files of a version in id order: candidate reads and the check of
-- vector hits (is this id an active file of the version?) without the heap.
CREATE INDEX files_version_active_idx ON files (version_id, id) WHERE status = 'active';
