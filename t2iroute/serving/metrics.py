"""The server's Prometheus metrics (``GET /metrics``), one registry per app."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info


class ServerMetrics:
    """Requests by endpoint and status, images and routed prompts per backend, fallbacks, imputed
    features, routing and generation latency, batching, queue depth and the warm-up's seconds."""

    def __init__(self, backends):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("t2iroute_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.images = Counter("t2iroute_images", "images generated", ["backend"], registry=r)
        self.routed = Counter("t2iroute_routed", "prompts routed to each backend", ["backend"], registry=r)
        self.fallbacks = Counter("t2iroute_fallbacks", "backend failures that fell back", ["backend"], registry=r)
        self.imputed = Counter("t2iroute_imputed_features", "prompts with imputed feature groups", ["part"], registry=r)
        self.autoscore = Counter(
            "t2iroute_autoscore",
            "served images offered to the autoscorer: scored, failed, dropped",
            ["outcome"],
            registry=r,
        )
        self.feedback = Counter("t2iroute_feedback", "scores recorded for served images", ["source"], registry=r)
        self.explored = Counter(
            "t2iroute_explored", "images sent to a backend other than the policy choice", ["backend"], registry=r
        )
        self.route_s = Histogram(
            "t2iroute_routing_seconds",
            "routing time per request",
            registry=r,
            buckets=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10),
        )
        self.gen_s = Histogram(
            "t2iroute_generation_seconds",
            "generation wall time per request",
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.batches = Counter("t2iroute_generate_batches", "Router.generate calls the server made", registry=r)
        self.batched = Counter(
            "t2iroute_requests_batched", "generation requests that shared a batch with others", registry=r
        )
        self.queue = Gauge(
            "t2iroute_queue_depth", "generation and route requests accepted and not yet answered", registry=r
        )
        self.warmup_s = Gauge(
            "t2iroute_warmup_seconds", "how long the warm-up took (0 until it has finished)", registry=r
        )
        self.artifact_loaded = Gauge(
            "t2iroute_artifact_loaded_timestamp_seconds", "when the served artifact was loaded (Unix time)", registry=r
        )
        self.artifact_info = Info("t2iroute_artifact", "the served artifact", registry=r)
        for b in backends:
            self.images.labels(b)
            self.routed.labels(b)

    def artifact(self, info: dict) -> None:
        self.artifact_loaded.set(info["loaded_at"])
        self.artifact_info.info({"sha256": str(info.get("sha256")), "path": str(info.get("path"))})

    def count_results(self, results) -> None:
        """A generation's images: per backend made and routed to, routing time, fallbacks, imputed parts."""
        for r in results:
            self.images.labels(r.backend).inc()
            self.routed.labels(r.decision.backend).inc()
            self.route_s.observe(r.route_s)
            for f in r.fallbacks:
                self.fallbacks.labels(f["backend"]).inc()
            for part in r.decision.imputed:
                self.imputed.labels(part).inc()
            if r.decision.explored:
                self.explored.labels(r.decision.backend).inc()


class RetryCollector:
    """``t2iroute_backend_retries_total``: calls sent again after a model replica died (engine=ray)."""

    def __init__(self, router):
        self.router = router

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        fam = CounterMetricFamily(
            "t2iroute_backend_retries", "backend calls sent again after their replica died", labels=["backend"]
        )
        for name, b in self.router.backends.items():
            if getattr(b, "n_retried", None) is not None:
                fam.add_metric([name], float(b.n_retried))
        yield fam
