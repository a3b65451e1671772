"""k-nearest-neighbour predictor on cosine similarity."""

from __future__ import annotations

import numpy as np

from t2iroute.predictors.base import QualityPredictor, StateError, _slice, slice_width, state_array, state_number

#: query rows per neighbour selection: with 256 rows x 10,000 training rows each temporary stays
#: under glibc's largest mmap threshold (32 MB), so blocks reuse the heap instead of faulting in
#: fresh pages (1,000 rows at once spent 4x as long in argpartition, first touching a 56 MB index
#: array). The similarities themselves are one product per 2,048 rows, as before: a smaller
#: product rounds differently in float32 and ties among neighbours would break differently.
CHUNK = 256


class KNNPredictor(QualityPredictor):
    """Mean quality of the k most similar training prompts (cosine similarity).

    ``temperature`` > 0 weights neighbours by softmax(similarity / temperature); None weighs
    them equally. Columns ``feature_slice`` (start, stop) restrict the similarity to one block
    (e.g. the embedding) when features are composed.
    """

    type_name = "knn"
    missing_rounds = 3  # cheap: refit on its own fill (EM) a few times

    def __init__(
        self,
        n_neighbors: int = 50,
        temperature: float | None = None,
        relative: bool = True,
        feature_slice: tuple[int, int] | None = None,
        stack_kernels: dict | None = None,
    ):
        self.n_neighbors = n_neighbors
        self.temperature = temperature
        self.relative = relative
        self.feature_slice = feature_slice
        self.stack_kernels = stack_kernels

    def _prep(self, X):
        X = _slice(X, self.feature_slice)
        n = np.linalg.norm(X, axis=1, keepdims=True)
        return (X / np.where(n > 0, n, 1.0)).astype(np.float32)

    def _fit_core(self, X, Y, texts=None):
        if int(self.n_neighbors) < 1:
            raise ValueError(f"n_neighbors must be >= 1, got {self.n_neighbors}")
        self.X_ = self._prep(X)
        self.Y_ = Y.astype(np.float64)

    def neighbors(self, X, k: int, exclude_self: bool = False):
        """(similarities, indices) of the k nearest training rows, most similar first."""
        Q = self._prep(np.asarray(X, dtype=np.float64))
        k_eff = min(k + int(exclude_self), len(self.X_))
        sims, idx = [], []
        for s in range(0, len(Q), 2048):  # bounded memory for big queries
            S_all = Q[s : s + 2048] @ self.X_.T
            for r in range(0, len(S_all), CHUNK):  # row by row: the same selection, less memory touched
                S = S_all[r : r + CHUNK]
                part = np.argpartition(-S, k_eff - 1, axis=1)[:, :k_eff]
                ps = np.take_along_axis(S, part, axis=1)
                order = np.argsort(-ps, axis=1, kind="stable")
                sims.append(np.take_along_axis(ps, order, axis=1))
                idx.append(np.take_along_axis(part, order, axis=1))
        sims, idx = np.vstack(sims), np.vstack(idx)
        if exclude_self:
            sims, idx = sims[:, 1:], idx[:, 1:]
        return sims, idx

    def _weighted(self, sims, idx, temperature=None, Yn=None):
        """Weighted mean of the neighbours' rows; ``Yn``: ``Y_[idx]`` when already gathered."""
        if temperature:
            w = np.exp((sims - sims[:, :1]) / float(temperature))
        else:
            w = np.ones_like(sims)
        w = w / w.sum(axis=1, keepdims=True)
        return np.einsum("nk,nkj->nj", w, self.Y_[idx] if Yn is None else Yn)

    def _predict_core(self, X, texts=None):
        sims, idx = self.neighbors(X, int(self.n_neighbors))
        return self._weighted(sims, idx, self.temperature)

    def stack_features(self, X, texts=None) -> np.ndarray:
        """Several neighbourhood estimates at once for a stacking model.

        ``stack_kernels``: ``softmax`` [[T, k], ...] (weights exp((sim - sim_1) / T) over the top k),
        ``inverse`` [k, ...] (weights 1 / (1 - sim + 1e-3)), ``density`` [T, ...] (log sum of
        exp((sim - 1) / T) over the top 200: how crowded the neighbourhood is) and ``distance``
        [k, ...] (mean cosine distance to the top k). Without it: the plain prediction.
        """
        kern = self.stack_kernels
        if not kern:
            return super().stack_features(X, texts)
        ks = [int(k) for _, k in kern.get("softmax", [])] + [int(k) for k in kern.get("inverse", [])]
        ks += [int(k) for k in kern.get("distance", [])] + ([200] if kern.get("density") else [])
        kmax = max(ks + [int(self.n_neighbors)])
        sims, idx = self.neighbors(np.asarray(X, dtype=np.float64), kmax)
        Yn = self.Y_[idx]  # gathered once: each kernel reads its first k neighbours
        cols = []
        for T, k in kern.get("softmax", []):
            cols.append(self._weighted(sims[:, : int(k)], None, float(T), Yn[:, : int(k)]))
        for k in kern.get("inverse", []):
            w = 1.0 / (1.0 - sims[:, : int(k)] + 1e-3)
            cols.append(np.einsum("nk,nkj->nj", w / w.sum(1, keepdims=True), Yn[:, : int(k)]))
        for T in kern.get("density", []):
            cols.append(np.log(np.exp((sims[:, :200] - 1.0) / float(T)).sum(1, keepdims=True)))
        for k in kern.get("distance", []):
            cols.append((1.0 - sims[:, : int(k)]).mean(1, keepdims=True))
        return np.hstack(cols)

    def _core_state(self):
        return {}, {"X": self.X_, "Y": self.Y_}, {}

    def _set_core_state(self, meta, arrays, texts):
        d = slice_width(self.feature_slice, self.n_features_in_)
        k = self.n_neighbors
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 10**7:
            raise StateError("predictor param 'n_neighbors'", f"must be a whole number >= 1, got {k!r:.60}")
        if self.temperature is not None:
            state_number(self.temperature, "predictor param 'temperature'", 0.0)
        self._check_kernels()
        X = state_array(arrays, "X", (None, d))
        self.Y_ = state_array(arrays, "Y", (len(X), self.n_outputs_))
        # training rows are stored unit-length (or zero): similarities stay within [-1, 1]
        if (np.linalg.norm(X, axis=1) > 1.001).any():
            raise StateError("array 'X'", "holds rows longer than 1; kNN stores unit-length rows", arrays["X"])
        self.X_ = X.astype(np.float32)

    def _check_kernels(self) -> None:
        kern = self.stack_kernels
        if kern is None:
            return
        what = "predictor param 'stack_kernels'"
        if not isinstance(kern, dict) or set(kern) - {"softmax", "inverse", "density", "distance"}:
            raise StateError(what, f"must map softmax/inverse/density/distance to lists, got {kern!r:.80}")

        def k_(v):
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10**7:
                raise StateError(what, f"neighbour counts must be whole numbers >= 1, got {v!r:.40}")

        for key, items in kern.items():
            if not isinstance(items, list):
                raise StateError(what, f"'{key}' must be a list, got {items!r:.60}")
            for it in items:
                if key == "softmax":
                    if not (isinstance(it, (list, tuple)) and len(it) == 2):
                        raise StateError(what, f"softmax entries are [temperature, k], got {it!r:.40}")
                    state_number(it[0], f"{what} softmax temperature", 1e-6)
                    k_(it[1])
                elif key == "density":  # exp((sim - 1) / T) summed: T >= 0.01 keeps it finite
                    state_number(it, f"{what} density temperature", 0.01)
                else:
                    k_(it)

    def stack_width_(self) -> int:
        kern = self.stack_kernels
        if not kern:
            return int(self.n_outputs_)
        k = int(self.n_outputs_)
        return (
            k * (len(kern.get("softmax", [])) + len(kern.get("inverse", [])))
            + len(kern.get("density", []))
            + len(kern.get("distance", []))
        )
