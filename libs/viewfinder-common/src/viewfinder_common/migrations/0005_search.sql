-- Indexes the search service's queries need (DESIGN §1, issue 8). Owned by search.
--
-- A removed user row hides the AI tag of the same name (0003). Search tests
-- "no removed user row for this file and tag" on every tag condition and facet;
-- such rows are rare, so a partial index over just them makes that anti-join
-- cost nothing instead of a scan of file_tags.
CREATE INDEX file_tags_user_removed_idx ON file_tags (tag, file_id) WHERE source = 'user' AND removed;
