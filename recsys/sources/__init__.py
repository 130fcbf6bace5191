"""Sources of raw logs: MovieLens files, the world simulator (Criteo is ingested by Spark)."""
