"""Many prompts into one folder, resumable: ``OUT/NNNN.png`` and one JSON line per image in
``OUT/generations.jsonl``, written as each chunk finishes; a run of the same prompts and seed
again skips the images that are there (what ``t2iroute generate ... out_dir=`` runs).

    run = FolderRun("imgs", prompts, seed=0)   # refuses a folder that holds another run's images
    if run.todo:
        summary = run.run(Router.load(DIR), policy={"budget": 0.3}, scorer=None)
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from t2iroute.errors import ConfigError, GenerationError
from t2iroute.paths import atomic_path, pid_alive

log = logging.getLogger(__name__)

RECORDS = "generations.jsonl"
TEMP_PREFIX = ".t2iroute-"  # temp images: .t2iroute-PID-...; a dead process's are cleaned


def clean_temp_images(folder: str | os.PathLike) -> None:
    """Remove temp images that killed runs left in ``folder`` (``.t2iroute-PID-*`` whose process
    is gone)."""
    try:
        names = [n for n in os.listdir(folder) if n.startswith(TEMP_PREFIX) and not n.startswith(".t2iroute-probe")]
    except OSError:
        return
    for n in names:
        p = os.path.join(folder, n)
        m = re.match(r"\.t2iroute-(\d+)-", n)
        try:
            if m and not pid_alive(int(m.group(1))) and os.path.isfile(p) and not os.path.islink(p):
                os.unlink(p)
        except OSError:
            pass


def write_image(image, out: str | os.PathLike, fmt: str) -> None:
    """Write ``image`` to ``out`` atomically: a reader never sees half an image, and an older file
    survives a failure (OSError). Mode 0644 with the usual umask."""
    out = os.path.abspath(out)
    folder = os.path.dirname(out)
    os.makedirs(folder, exist_ok=True)  # 0777 & ~umask: 0755 with the usual umask
    clean_temp_images(folder)
    umask = os.umask(0)
    os.umask(umask)
    with atomic_path(out, prefix=TEMP_PREFIX, mode=0o666 & ~umask) as tmp:
        image.save(tmp, format=fmt)


def score_one(scorer, image, prompt: str) -> dict:
    """``{"score": {metric: value}}``; a scorer that fails on this image gives ``{metric: null}``
    and ``score_error`` (why), with a warning: the image is written already, no score is made up."""
    try:
        return {"score": {scorer.metric: float(scorer.score([image], [prompt])[0])}}
    except Exception as e:  # noqa: BLE001 -- the image stands; the score is unavailable, and says why
        why = " ".join(str(e).split()) or type(e).__name__
        log.warning("score unavailable (%s): %s", scorer.metric, why)
        return {"score": {scorer.metric: None}, "score_error": f"{type(e).__name__}: {why}"}


def finished(path: Path, items: Sequence[str], seed: int) -> dict[int, dict]:
    """The images an earlier run of the same prompts wrote into the folder (index -> its JSON line);
    refuses a folder that holds another run's images. A half-written last line (a killed run) is cut."""
    if not path.exists():
        return {}
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):  # killed mid-line: drop the partial record
        raw = raw[: raw.rfind(b"\n") + 1]
        path.write_bytes(raw)
    done = {}
    for n, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
        try:
            rec = json.loads(line)
            i, prompt, s = int(rec["index"]), rec["decision"]["prompt"], int(rec["seed"])
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                f"out_dir={path.parent}: {RECORDS} line {n} is not a t2iroute generate record; use another out_dir"
            ) from None
        if i >= len(items) or items[i] != prompt or s != seed:
            what = (
                f"image {i} of {len(items)}"
                if i >= len(items)
                else f"prompt {prompt[:40]!r} where this run has {items[i][:40]!r}"
                if items[i] != prompt
                else f"seed {s} where this run has seed={seed}"
            )
            raise ConfigError(
                f"out_dir={path.parent} holds another run's images ({RECORDS} line {n}: {what}); "
                "use another out_dir, or the same prompts and seed to resume it"
            )
        if (path.parent / str(rec.get("file", ""))).is_file():
            done[i] = rec
    return done


def run_policy(router, policy: dict, items: Sequence[str], done: dict[int, dict]) -> dict:
    """The policy keywords for every chunk of a run: a policy that calibrates on the prompts routed
    together (a budget's lambda) is resolved ONCE on all the run's prompts, before chunking, so
    that chunk boundaries do not change decisions; a resumed run reuses the lambda its finished
    images were decided with (their records), so that it decides as an uninterrupted run would
    have. Policies deciding prompt by prompt pass through."""
    from t2iroute.router.policy import LambdaPolicy, policy_from_keywords

    pol = policy_from_keywords(**policy) or router.policy
    if getattr(pol, "per_prompt", False) or not hasattr(pol, "resolve"):
        return policy
    pol = router._resolve(pol)
    Q, _ = router.predict(list(items))
    oriented = pol.oriented(router.sign)
    resolved = oriented.resolve(router.routing_quality(Q), router.costs)
    if not isinstance(resolved, LambdaPolicy) or resolved is oriented:
        return policy  # nothing calibrated that a lambda holds: chunks decide as before
    want = resolved.spec()
    for rec in sorted(done.values(), key=lambda r: r["index"]):
        d = rec.get("decision") or {}
        spec = {k: v for k, v in (d.get("policy") or {}).items() if k != "lam"}
        lam = d.get("lambda")
        if spec == want and isinstance(lam, (int, float)) and not isinstance(lam, bool) and math.isfinite(lam):
            resolved = copy.copy(resolved)
            resolved.lam = float(lam)
            break
    return {"policy": resolved}


class FolderRun:
    """One resumable run of ``prompts`` at ``seed`` into ``out_dir``: :attr:`done` (what an earlier
    run wrote), :attr:`todo` (indices still to make), :meth:`run` makes them."""

    def __init__(self, out_dir: str | os.PathLike, prompts: Sequence[str], seed: int):
        self.out_dir = Path(out_dir)
        self.items = list(prompts)
        self.seed = int(seed)
        self.width = max(4, len(str(len(self.items) - 1)))
        self.done = finished(self.out_dir / RECORDS, self.items, self.seed)
        self.todo = [i for i in range(len(self.items)) if i not in self.done]
        self.failures: list[str] = []

    def run(
        self,
        router,
        *,
        policy: dict | None = None,
        backend: str | None = None,
        fallback: bool = True,
        scorer: Any = None,
        chunk_size: int = 16,
        progress: bool = False,
        write=write_image,
    ) -> dict:
        """Generate :attr:`todo`, chunk by chunk, writing each image and its record as it comes.
        Returns the summary (counts by backend, ``failed``, times). A chunk whose every backend
        failed is skipped and counted, its error kept in :attr:`failures` (the other images are
        written). ``write(image, path, fmt)``: how an image is written."""
        from tqdm import tqdm

        policy = run_policy(router, dict(policy or {}), self.items, self.done) if self.todo else {}
        bar = tqdm(
            total=len(self.items),
            initial=len(self.done),
            unit="img",
            file=sys.stderr,
            disable=not progress,
            desc="generate",
            dynamic_ncols=True,
        )
        counts: Counter = Counter()
        self.failures: list[str] = []
        t0 = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / RECORDS, "a", encoding="utf-8") as fh:
            for c in range(0, len(self.todo), int(chunk_size)):
                idx = self.todo[c : c + int(chunk_size)]
                try:
                    for j, res in router.generate_iter(
                        [self.items[i] for i in idx], seed=self.seed, backend=backend, fallback=fallback, **policy
                    ):
                        i = idx[j]
                        name = f"{i:0{self.width}d}.png"
                        write(res.image, str(self.out_dir / name), "PNG")
                        scored = score_one(scorer, res.image, self.items[i]) if scorer is not None else {}
                        fh.write(json.dumps({"index": i, "file": name, **res.to_dict(), **scored}) + "\n")
                        fh.flush()
                        counts[res.backend] += 1
                        bar.update(1)
                except GenerationError as e:  # the chunk's other images are written; go on with the next
                    self.failures.append(str(e))
        bar.close()
        gen_s = time.perf_counter() - t0
        made = sum(counts.values())
        summary = {
            "out_dir": str(self.out_dir),
            "records": str(self.out_dir / RECORDS),
            "prompts": len(self.items),
            "generated": made,
            "skipped_finished": len(self.done),
            "failed": len(self.todo) - made,
            "by_backend": dict(sorted(counts.items())),
            "generate_s": gen_s,
            "images_per_s": made / gen_s if made and gen_s > 0 else None,
        }
        return summary
