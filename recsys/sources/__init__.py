"""Sources of raw logs: MovieLens files (``movielens``, read row by row through ``text_rows``
with rejected rows in ``quarantine``), the world simulator (``simulator``, built from ``world``,
``response``, ``policies``, ``day_loop`` and ``replay``). Criteo is ingested by Spark."""
