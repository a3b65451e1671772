"""Automatic scoring of served images (``serve ... autoscore.share=0.1 scorer=clip``).

A share of the images the server makes is scored by a configured scorer in one background
thread, never on the request path: the request only puts (id, image, prompt) on a bounded queue
(a ``put_nowait``); when the queue is full the image is dropped and counted
(``t2iroute_autoscore_dropped_total``), the request never waits. Each score is recorded in the
decision log as feedback with source ``autoscore`` (a person's score, source ``user``, wins at
training). The scorer must score the router's metric: a CLIP score for a router trained on clip.
"""

from __future__ import annotations

import logging
import queue
import random
import threading

log = logging.getLogger("t2iroute.serving.app")


class AutoScorer:
    """``share``: the probability that a served image is scored; ``max_queue``: images waiting
    at most; ``batch``: images scored per scorer call."""

    def __init__(self, router, scorer, *, share: float, metrics=None, max_queue: int = 64, batch: int = 8, seed=None):
        if not 0.0 < float(share) <= 1.0:
            raise ValueError(f"autoscore.share={share}: a share in (0, 1]")
        if router.decision_log is None:
            raise ValueError("autoscore needs a decision log to record scores in (log_dir=DIR)")
        if getattr(scorer, "metric", None) != router.metric:
            raise ValueError(
                f"autoscore scorer writes metric {getattr(scorer, 'metric', None)!r}, the router routes on "
                f"{router.metric!r}: its scores would teach the wrong metric"
            )
        self.router_of, self.scorer, self.share = (lambda: router), scorer, float(share)
        self.metrics, self.batch = metrics, int(batch)
        self.queue: queue.Queue = queue.Queue(maxsize=int(max_queue))
        self.rng = random.Random(seed)
        self.scored = self.dropped = self.failed = 0
        self._thread = threading.Thread(target=self._run, name="t2iroute-autoscore", daemon=True)
        self._thread.start()

    def offer(self, results) -> None:
        """Put a share of ``results`` (GenerateResult) on the queue; never blocks."""
        for r in results:
            if r.id is None or self.rng.random() >= self.share:
                continue
            try:
                self.queue.put_nowait((r.id, r.image, r.decision.prompt))
            except queue.Full:
                self.dropped += 1
                if self.metrics is not None:
                    self.metrics.autoscore.labels(outcome="dropped").inc()

    def _run(self) -> None:
        while True:
            jobs = [self.queue.get()]
            while len(jobs) < self.batch:
                try:
                    jobs.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                scores = self.scorer.score([j[1] for j in jobs], [j[2] for j in jobs])
                for (rid, _, _), s in zip(jobs, scores):
                    self.router_of().feedback(rid, float(s), source="autoscore")
                self.scored += len(jobs)
                outcome, n = "scored", len(jobs)
            except Exception as e:  # noqa: BLE001 -- a scorer that fails loses its scores, not the server
                self.failed += len(jobs)
                outcome, n = "failed", len(jobs)
                log.warning("autoscore: %d image(s) not scored: %s: %s", len(jobs), type(e).__name__, e)
            if self.metrics is not None:
                self.metrics.autoscore.labels(outcome=outcome).inc(n)
            for _ in jobs:
                self.queue.task_done()

    def join(self, timeout: float = 30.0) -> bool:
        """Wait until every queued image is scored (tests, shutdown); True if it was."""
        done = threading.Event()
        threading.Thread(target=lambda: (self.queue.join(), done.set()), daemon=True).start()
        return done.wait(timeout)
