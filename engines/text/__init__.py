"""Text models: sentence embeddings for retrieval."""
