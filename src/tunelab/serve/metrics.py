"""Prometheus metrics for the server, on a registry of their own (several apps can live in one process).

`/metrics` names key ids (rate limiting), so it needs an admin key unless `public_metrics` is set.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tunelab_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "tunelab_request_latency_seconds",
            "Completion latency (whole request).",
            ["endpoint"],
            registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.tokens = Counter("tunelab_generated_tokens", "Completion tokens generated.", ["model"], registry=r)
        self.prompt_tokens = Counter("tunelab_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r)
        self.guard = Counter("tunelab_guard_decisions", "Guard decisions.", ["stage", "rule", "action"], registry=r)
        self.rate_limited = Counter(
            "tunelab_rate_limited", "Requests refused by the rate limit.", ["key_id"], registry=r
        )
        self.in_flight = Gauge("tunelab_in_flight_requests", "Completion requests being served.", registry=r)
        self.batch_size = Histogram(
            "tunelab_batch_size",
            "Requests per generation batch.",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )

        self.store_retries = Counter(
            "tunelab_store_retries", "Store writes retried (locked database, lost connection).", ["table"], registry=r
        )
        self.store_failures = Counter(
            "tunelab_store_failures",
            "Store writes that failed after every retry (row not stored).",
            ["table"],
            registry=r,
        )
        self.disconnects = Counter(
            "tunelab_client_disconnects", "Completions whose client went away before the end.", ["endpoint"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
