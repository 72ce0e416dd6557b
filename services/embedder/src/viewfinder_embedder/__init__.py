"""viewfinder embedder service: Embeds images with a multimodal embedding model into the vector store, emits FileEmbedded and serves EmbedService."""
