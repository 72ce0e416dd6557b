"""viewfinder search service: Answers combined searches (vectors, tags, metadata, the query DSL) over a dataset version."""
