"""Prometheus metrics at /metrics (prometheus_client), one registry per server.

Counters and histograms are updated by the handlers; the engine's gauges
(running and waiting requests, KV slots in use, prefix-cache hits) are read
from the engine when /metrics is scraped, so they are never stale.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, engine_source=None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("mosslm_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.refusals = Counter("mosslm_refusals", "Requests refused, by reason", ["reason"], registry=r)
        self.ttft = Histogram("mosslm_time_to_first_token_seconds", "Time to the first generated token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("mosslm_inter_token_latency_seconds", "Time between streamed tokens",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("mosslm_prompt_tokens", "Prompt tokens processed", registry=r)
        self.completion_tokens = Counter("mosslm_completion_tokens", "Completion tokens generated", registry=r)
        self.in_flight = Gauge("mosslm_requests_in_flight", "Requests being answered by this process", registry=r)
        if engine_source is not None:
            r.register(_EngineCollector(engine_source))

    def observe_tokens(self, ttft: float | None, token_times: list[float]) -> None:
        if ttft is not None:
            self.ttft.observe(ttft)
        for a, b in zip(token_times, token_times[1:]):
            self.itl.observe(b - a)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    """Reads the engine's state at scrape time; `source()` returns the engine or None while loading."""

    def __init__(self, source) -> None:
        self.source = source

    def collect(self):
        engine = self.source()
        if engine is None:
            return
        stats = engine.stats()
        total = len(engine.slots.slots)
        stats = {"running": stats["running"], "waiting": stats["waiting"], "kv_slots": total,
                 "kv_slots_in_use": total - stats["free_slots"],
                 "prefix_cache_hit_tokens": stats["prefix_hit_tokens"],
                 "prefix_cache_lookup_tokens": stats["prompt_tokens"]}
        for name, doc in (("running", "Requests generating in the engine"),
                          ("waiting", "Requests queued for a KV slot"),
                          ("kv_slots_in_use", "KV cache slots held by running requests"),
                          ("kv_slots", "KV cache slots in all")):
            g = GaugeMetricFamily(f"mosslm_engine_{name}", doc)
            g.add_metric([], stats[name])
            yield g
        for name, doc in (("prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache"),
                          ("prefix_cache_lookup_tokens", "Prompt tokens looked up in the prefix cache")):
            g = GaugeMetricFamily(f"mosslm_engine_{name}", doc)  # cumulative, owned by the engine
            g.add_metric([], stats[name])
            yield g

