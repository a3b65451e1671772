"""Out-of-domain notices: how far a prompt is from every prompt the router was trained on.

A router's predictions are only as good as its training prompts are like the prompt at hand: a
router trained on testbed scenes ("three striped blue squares left of a green triangle") knows
nothing about "a cat". :class:`Domain` keeps the training prompts' feature vectors (a subsample
of at most :data:`MAX_REFERENCE` rows, float32) and a distance threshold, and tells for each routed
prompt the distance to its nearest training prompt, and whether that is beyond the threshold.

* The space: the featurizer's embedding block when it has one (sentence embeddings: distances
  there follow meaning), else every feature column, each standardized by its training mean and
  standard deviation (so no column dominates by its units).
* The distance: Euclidean, to the nearest reference row; one matrix product per routing call.
* The threshold: the ``quantile`` (0.99) of nearest-neighbour distances of training prompts
  themselves: leave-one-out distances within the reference when every training prompt is a
  reference row, else the distances of the training prompts left out of the subsample. About
  1% of prompts like the training prompts are therefore flagged; prompts from elsewhere mostly are.

Stored in an artifact as ``domain`` in the manifest (space, columns, threshold, counts) and the
arrays ``router_domain__reference``, ``router_domain__center`` and ``router_domain__scale`` in
``predictor/arrays.npz`` (see :mod:`t2iroute.router.artifact`, which validates them).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

#: reference rows kept by default (training prompts beyond it are subsampled)
MAX_REFERENCE = 2000
#: the most reference rows an artifact may hold
MAX_REFERENCE_LOAD = 100_000
#: at least this many distinct training prompts are needed for a threshold
MIN_REFERENCE = 5
ARRAY_PREFIX = "router_domain/"
ARRAY_KEYS = ("reference", "center", "scale")


def _nearest_sq(
    A: np.ndarray, R: np.ndarray, r_sq: np.ndarray, *, chunk: int = 2048, exclude_self: bool = False
) -> np.ndarray:
    """Squared distance from each row of ``A`` to its nearest row of ``R`` (float32 products)."""
    out = np.empty(len(A), np.float64)
    for s in range(0, len(A), chunk):
        a = A[s : s + chunk]
        d2 = (np.einsum("ij,ij->i", a, a)[:, None] + r_sq[None, :]) - 2.0 * (a @ R.T)
        if exclude_self:
            idx = np.arange(s, s + len(a))
            d2[np.arange(len(a)), idx] = np.inf
        out[s : s + len(a)] = d2.min(axis=1)
    return np.maximum(out, 0.0)


class Domain:
    """The training prompts' region of one feature space, and a distance threshold.

    ``reference`` (m, d): the (standardized) training vectors; ``columns``: the feature columns
    ``[start, stop)`` the space is read from; ``center`` / ``scale`` (d,): the standardization
    (zeros and ones for the embedding space); ``threshold``: the distance beyond which a prompt
    is out of domain.
    """

    def __init__(
        self,
        reference,
        *,
        columns: tuple[int, int],
        center,
        scale,
        threshold: float,
        space: str = "embedding",
        quantile: float = 0.99,
        n_train: int | None = None,
    ):
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: infinite, refused by _check
            self.reference = np.ascontiguousarray(reference, dtype=np.float32)
            self.center = np.asarray(center, dtype=np.float32).reshape(-1)
            self.scale = np.asarray(scale, dtype=np.float32).reshape(-1)
        self.columns = (int(columns[0]), int(columns[1]))
        self.threshold = float(threshold)
        self.space = str(space)
        self.quantile = float(quantile)
        self.n_train = int(n_train if n_train is not None else len(self.reference))
        self._check()
        self._r_sq = np.einsum("ij,ij->i", self.reference, self.reference)

    def _check(self) -> None:
        """ValueError naming what is inconsistent (an artifact's arrays go through here)."""
        R, (start, stop) = self.reference, self.columns
        if R.ndim != 2 or not 1 <= len(R) <= MAX_REFERENCE_LOAD:
            raise ValueError(f"reference must be a 2-d array of 1 to {MAX_REFERENCE_LOAD} rows, got shape {R.shape}")
        if not 0 <= start < stop or stop - start != R.shape[1]:
            raise ValueError(f"columns [{start}, {stop}) do not match the reference's {R.shape[1]} columns")
        for name, v in (("center", self.center), ("scale", self.scale)):
            if v.shape != (R.shape[1],):
                raise ValueError(f"{name} has shape {v.shape}, expected ({R.shape[1]},)")
        if not (np.isfinite(R).all() and np.isfinite(self.center).all() and np.isfinite(self.scale).all()):
            raise ValueError("reference, center and scale must be finite")
        if not (self.scale > 0).all():
            raise ValueError("scale must be > 0")
        if float(np.abs(R).max(initial=0.0)) > 1e6:
            raise ValueError("reference values beyond 1e6 (standardized features are small)")
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise ValueError(f"threshold must be a finite number >= 0, got {self.threshold}")
        if not 0 < self.quantile <= 1:
            raise ValueError(f"quantile must be in (0, 1], got {self.quantile}")

    # -- building -------------------------------------------------------------------------------
    @staticmethod
    def space_of(featurizer, n_features: int) -> tuple[str, tuple[int, int], bool]:
        """(space name, columns, standardize): the embedding block where the featurizer has
        one, else every column (standardized)."""
        blocks = getattr(featurizer, "blocks_", None) or {}
        sl = blocks.get("embedding")
        if sl is not None and sl.stop > sl.start:
            return "embedding", (int(sl.start), int(sl.stop)), False
        return "features", (0, int(n_features)), True

    @classmethod
    def fit(
        cls,
        X: np.ndarray,
        *,
        featurizer=None,
        space: tuple[str, tuple[int, int], bool] | None = None,
        max_rows: int = MAX_REFERENCE,
        quantile: float = 0.99,
        seed: int = 0,
    ) -> "Domain | None":
        """The domain of the training feature rows ``X`` (None when fewer than
        :data:`MIN_REFERENCE` distinct rows: no threshold can be read)."""
        X = np.asarray(X, dtype=np.float64)
        name, (start, stop), standardize = space or cls.space_of(featurizer, X.shape[1])
        V = X[:, start:stop]
        V = V[np.isfinite(V).all(axis=1)]
        if standardize:
            center = V.mean(axis=0) if len(V) else np.zeros(V.shape[1])
            scale = V.std(axis=0) if len(V) else np.ones(V.shape[1])
            scale = np.where(scale > 1e-12, scale, 1.0)
        else:
            center, scale = np.zeros(V.shape[1]), np.ones(V.shape[1])
        Z = ((V - center) / scale).astype(np.float32)
        Z = np.unique(Z, axis=0)  # repeated prompts would make leave-one-out distances 0
        if len(Z) < MIN_REFERENCE or Z.shape[1] == 0:
            return None
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(Z))
        if len(Z) > max_rows:
            R, held = Z[perm[:max_rows]], Z[perm[max_rows : max_rows + 5 * max_rows]]
            d2 = _nearest_sq(held, R, np.einsum("ij,ij->i", R, R))
        else:
            R = Z[perm]
            d2 = _nearest_sq(R, R, np.einsum("ij,ij->i", R, R), exclude_self=True)
        threshold = float(np.quantile(np.sqrt(d2), quantile))
        return cls(
            R,
            columns=(start, stop),
            center=center,
            scale=scale,
            threshold=threshold,
            space=name,
            quantile=quantile,
            n_train=len(Z),
        )

    # -- routing --------------------------------------------------------------------------------
    def distances(self, X: np.ndarray) -> np.ndarray:
        """(n,) distance of each feature row to its nearest training prompt."""
        start, stop = self.columns
        V = np.asarray(X, dtype=np.float32)[:, start:stop]
        Z = (V - self.center) / self.scale
        d = np.sqrt(_nearest_sq(Z, self.reference, self._r_sq))
        return np.where(np.isfinite(d), d, np.inf)

    def notices(self, X: np.ndarray) -> list[dict[str, Any] | None]:
        """Per row: ``{"distance": d, "threshold": t, "space": ...}`` when out of domain, else None."""
        d = self.distances(X)
        return [
            None
            if di <= self.threshold
            else {
                "distance": round(float(di), 6) if math.isfinite(di) else None,
                "threshold": round(self.threshold, 6),
                "space": self.space,
            }
            for di in d
        ]

    # -- artifacts ------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "columns": list(self.columns),
            "threshold": self.threshold,
            "quantile": self.quantile,
            "n_train": self.n_train,
            "n_reference": int(len(self.reference)),
            "distance": "euclidean",
        }

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            ARRAY_PREFIX + "reference": self.reference,
            ARRAY_PREFIX + "center": self.center,
            ARRAY_PREFIX + "scale": self.scale,
        }

    @classmethod
    def from_state(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], n_features: int) -> "Domain":
        """Rebuild from an artifact's manifest entry and arrays; ValueError naming what is wrong."""
        got = {k[len(ARRAY_PREFIX) :]: v for k, v in arrays.items() if k.startswith(ARRAY_PREFIX)}
        missing = [k for k in ARRAY_KEYS if k not in got]
        if missing:
            raise ValueError(f"array 'router_domain__{missing[0]}' is missing")
        extra = sorted(set(got) - set(ARRAY_KEYS))
        if extra:
            raise ValueError(f"array 'router_domain__{extra[0]}' is not one the format knows")
        for k in ARRAY_KEYS:
            a = got[k]
            if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
                raise ValueError(f"array 'router_domain__{k}' must hold floats, got {getattr(a, 'dtype', type(a))}")
        start, stop = meta["columns"]
        if stop > n_features:
            raise ValueError(f"domain columns [{start}, {stop}) beyond the {n_features} features")
        dom = cls(
            got["reference"],
            columns=(start, stop),
            center=got["center"],
            scale=got["scale"],
            threshold=meta["threshold"],
            space=meta["space"],
            quantile=meta.get("quantile", 0.99),
            n_train=meta.get("n_train"),
        )
        n_ref = meta.get("n_reference")
        if n_ref is not None and n_ref != len(dom.reference):
            raise ValueError(f"n_reference {n_ref} but array 'router_domain__reference' has {len(dom.reference)} rows")
        return dom


def check_domain_manifest(d: Any) -> str | None:
    """None when the manifest's ``domain`` entry is well formed, else what is wrong."""
    if not isinstance(d, dict):
        return "'domain' must be a mapping"
    space = d.get("space")
    if space not in ("embedding", "features"):
        return f"domain.space must be embedding or features, got {space!r:.60}"
    cols = d.get("columns")
    if (
        not isinstance(cols, list)
        or len(cols) != 2
        or any(isinstance(c, bool) or not isinstance(c, int) for c in cols)
        or not 0 <= cols[0] < cols[1]
    ):
        return f"domain.columns must be [start, stop] with 0 <= start < stop, got {cols!r:.60}"
    t = d.get("threshold")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t >= 0):
        return f"domain.threshold must be a finite number >= 0, got {t!r:.60}"
    q = d.get("quantile", 0.99)
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1:
        return f"domain.quantile must be a number in (0, 1], got {q!r:.60}"
    for key in ("n_train", "n_reference"):
        v = d.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            return f"domain.{key} must be a whole number >= 1, got {v!r:.60}"
    if d.get("distance", "euclidean") != "euclidean":
        return f"domain.distance must be euclidean, got {d.get('distance')!r:.60}"
    return None


def check_range(name: str, r: Any) -> tuple[float, float] | str:
    """``[lo, hi]`` as floats, or what is wrong with it (finite numbers, lo <= hi)."""
    if (
        not isinstance(r, (list, tuple))
        or len(r) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in r)
    ):
        return f"{name} must be [low, high], two numbers, got {r!r:.60}"
    lo, hi = float(r[0]), float(r[1])
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{name} must hold finite numbers, got {r!r:.60}"
    if lo > hi:
        return f"{name} must have low <= high, got {r!r:.60}"
    return lo, hi


def check_metric_range(m: Any) -> str | None:
    """None when the manifest's ``metric_range`` entry is well formed, else what is wrong."""
    if not isinstance(m, dict):
        return "'metric_range' must be a mapping"
    if "observed" not in m:
        return "metric_range lacks 'observed'"
    for key in ("observed", "bounds"):
        if key == "bounds" and m.get(key) is None:
            continue
        got = check_range(f"metric_range.{key}", m[key])
        if isinstance(got, str):
            return got
    return None
