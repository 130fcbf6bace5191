"""The gRPC serving layer (docs/serving.md). May import recsys, grpc and redis; the library
``recsys/`` never imports this package.

- ``server``: ``RecsysServer`` lifecycle, auth, health, reflection, workers; ``serve()``
- ``service``: the ``recsys.v1.RecsysService`` servicer
- ``registry``: newest valid bundle version, loaded beside the old and swapped atomically
- ``cache``: in-process LRU -> Redis -> compute, single-flight, Redis backoff
- ``features``: request data and catalogues -> model input through the library's rule
- ``config``, ``metrics``, ``client``, ``smoke``, ``gen_protos``; generated code in ``protos_gen``
"""
