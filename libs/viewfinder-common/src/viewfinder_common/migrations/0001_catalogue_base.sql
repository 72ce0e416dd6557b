-- The catalogue's base: extensions every later migration may rely on.
-- pgvector backs the default vector store (DESIGN §4).
CREATE EXTENSION IF NOT EXISTS vector;
