"""Prometheus metrics of one server (own registry: several servers may share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

# Seconds; loopback calls take 0.3 ms up, Score of hundreds of candidates tens of ms.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServerMetrics:
    """``recsys_requests_total{method,code}``, ``recsys_request_seconds{method}``,
    ``recsys_cache_hits_total{tier}`` (tier: lru, redis, compute, shared = waited on another
    call's computation) and ``recsys_redis_errors_total``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "recsys_requests", "RPCs answered", ["method", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "recsys_request_seconds",
            "RPC latency in the server",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cache_hits = Counter(
            "recsys_cache_hits",
            "embeddings served per cache tier",
            ["tier"],
            registry=self.registry,
        )
        self.redis_errors = Counter(
            "recsys_redis_errors",
            "Redis reads/writes that failed or timed out",
            registry=self.registry,
        )
        self.bundle_swaps = Counter(
            "recsys_bundle_swaps", "bundle versions swapped in", ["kind"], registry=self.registry
        )

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample (tests, logs); 0 when never set."""
        got = self.registry.get_sample_value(name, labels or None)
        return 0.0 if got is None else got

    def serve_http(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` on ``host:port`` (a daemon thread)."""
        start_http_server(port, addr=host, registry=self.registry)
