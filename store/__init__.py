"""Model loading, corpus and the DuckDB activation store (imports nothing else of saebench)."""
