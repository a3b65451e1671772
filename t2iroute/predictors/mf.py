"""A shared model of every backend: a prompt effect, a backend offset and a low-rank interaction
learned from the prompt's features, fitted on whatever cells were observed.

``quality[p, b] = mean(x_p) + offset[b] + (z_p A) . u_b``: the prompt effect ``mean(x_p)`` is the
base class's ridge model of the prompt's two-way effect (learned from whichever backends saw the
prompt), ``z_p`` the standardized features, ``A`` (d x rank) maps them to a few latent factors that
every backend shares, ``u_b`` is the backend's loading on them. It is matrix factorisation as
RouteLLM's MF router does it, except that the prompt's factors come from its features, so it
predicts prompts it never saw; and a backend seen on few prompts borrows the factors the others
taught. Fitted by alternating ridge regressions over the observed cells only (NaN: missing).
"""

from __future__ import annotations

import numpy as np

from t2iroute.predictors.base import QualityPredictor, _slice, slice_width, state_array


class MFPredictor(QualityPredictor):
    """``rank``: latent factors shared by the backends; ``alpha``: ridge strength on the feature
    map ``A``; ``alpha_backend``: on the backends' loadings; ``rounds``: alternating fits."""

    type_name = "mf"
    handles_missing = True

    def __init__(
        self,
        rank: int = 3,
        alpha: float = 1000.0,
        alpha_backend: float = 1.0,
        rounds: int = 15,
        relative: bool = True,
        feature_slice: tuple[int, int] | None = None,
    ):
        self.rank = rank
        self.alpha = alpha
        self.alpha_backend = alpha_backend
        self.rounds = rounds
        self.relative = relative
        self.feature_slice = feature_slice

    def _fit_core(self, X, Y, texts=None):
        if int(self.rank) < 1:
            raise ValueError(f"mf: rank must be >= 1, got {self.rank}")
        X = _slice(X, self.feature_slice)
        self.x_mean_ = X.mean(axis=0)
        sd = X.std(axis=0)
        self.x_scale_ = np.where(sd > 1e-12, sd, 1.0)
        Z = (X - self.x_mean_) / self.x_scale_
        n, d = Z.shape
        k = Y.shape[1]
        r = min(int(self.rank), k, d)
        obs = np.isfinite(Y)
        R = np.where(obs, Y, 0.0)
        off = R.sum(axis=0) / np.maximum(obs.sum(axis=0), 1)
        # start: SVD of one ridge over the table with missing cells at the backend's mean
        F = np.where(obs, Y, off[None, :]) - off[None, :]
        B = np.linalg.solve(Z.T @ Z + float(self.alpha) * np.eye(d), Z.T @ F)
        P, S, Qt = np.linalg.svd(B, full_matrices=False)
        A = P[:, :r] * np.sqrt(S[:r])
        U = Qt[:r].T * np.sqrt(S[:r])
        # each backend's Gram matrix Z_b' Z_b, or Z_b itself where it has fewer rows than columns
        grams = [Z[obs[:, b]].T @ Z[obs[:, b]] if obs[:, b].sum() >= d else Z[obs[:, b]] for b in range(k)]
        for _ in range(int(self.rounds)):
            # the backends' offsets and loadings, given the prompts' factors
            H = Z @ A
            for b in range(k):
                m = obs[:, b]
                D = np.hstack([np.ones((m.sum(), 1)), H[m]])
                reg = float(self.alpha_backend) * np.diag([0.0] + [1.0] * r)
                sol = np.linalg.solve(D.T @ D + reg + 1e-9 * np.eye(r + 1), D.T @ Y[m, b])
                off[b], U[b] = sol[0], sol[1:]
            # the feature map, given the loadings: a ridge regression on vec(A) over observed cells,
            # alpha A + sum_b gram_b A u_b u_b' = sum_b Z_b' (y_b - off_b) u_b', by conjugate
            # gradients warm-started from the last round (the system is positive definite)
            W = np.einsum("bs,bt->bst", U, U)
            rhs = sum(np.outer(Z[obs[:, b]].T @ (Y[obs[:, b], b] - off[b]), U[b]) for b in range(k))
            A = _solve_feature_map(grams, W, float(self.alpha), rhs, A)
        self.A_, self.U_, self.offset_ = A, U, off.copy()

    def _predict_core(self, X, texts=None):
        Z = (_slice(X, self.feature_slice) - self.x_mean_) / self.x_scale_
        return self.offset_[None, :] + (Z @ self.A_) @ self.U_.T

    def _core_state(self):
        arrays = {"x_mean": self.x_mean_, "x_scale": self.x_scale_, "A": self.A_, "U": self.U_}
        arrays["offset"] = self.offset_
        return {"rank": int(self.A_.shape[1])}, arrays, {}

    def _set_core_state(self, meta, arrays, texts):
        d, k = slice_width(self.feature_slice, self.n_features_in_), self.n_outputs_
        self.x_mean_ = state_array(arrays, "x_mean", (d,))
        self.x_scale_ = state_array(arrays, "x_scale", (d,), positive=True)
        self.A_ = state_array(arrays, "A", (d, None))
        r = self.A_.shape[1]
        self.U_ = state_array(arrays, "U", (k, r))
        self.offset_ = state_array(arrays, "offset", (k,))


def _solve_feature_map(grams, W, alpha: float, rhs: np.ndarray, A0: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """``A`` with ``alpha A + sum_b G_b A W[b] = rhs`` (d x r), by conjugate gradients from ``A0``,
    where ``G_b`` is ``grams[b]`` (d x d) or ``grams[b]' grams[b]`` (``grams[b]`` being Z_b with
    fewer rows than d); each step costs at most k d^2 r, where a direct solve costs (d r)^3. Falls
    back to the direct solve when it has not converged within d r steps (it does in a few dozen)."""
    d = A0.shape[0]

    def gram_times(g, M):
        return g @ M if g.shape[0] == d else g.T @ (g @ M)

    def apply(A):
        return alpha * A + sum(gram_times(g, A @ w) for g, w in zip(grams, W))

    A = A0.copy()
    R = rhs - apply(A)
    P = R.copy()
    rr = float((R * R).sum())
    stop = (rtol * float(np.sqrt((rhs * rhs).sum()))) ** 2
    for _ in range(A.size):
        if rr <= stop:
            return A
        AP = apply(P)
        step = rr / float((P * AP).sum())
        A += step * P
        R -= step * AP
        rr_new = float((R * R).sum())
        P = R + (rr_new / rr) * P
        rr = rr_new
    if rr <= stop:
        return A
    r = A.shape[1]
    full = [g if g.shape[0] == d else g.T @ g for g in grams]
    G = alpha * np.eye(d * r) + sum(np.kron(g, w) for g, w in zip(full, W))
    return np.linalg.solve(G, rhs.ravel()).reshape(d, r)
