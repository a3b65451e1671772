"""Training a router and benchmarking it against single backends and the oracle."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from t2iroute.errors import ConfigError
from t2iroute.features import build_featurizer
from t2iroute.predictors import build_predictor, resolve_blocks
from t2iroute.predictors.base import QualityPredictor, backend_means
from t2iroute.router.core import Router
from t2iroute.router.policy import (
    FixedPolicy,
    LambdaPolicy,
    anchor_quality,
    build_policy,
    calibrate_lambda,
    route_scores,
)
from t2iroute.training.evaluate import summarize
from t2iroute.training.table import QualityMatrix, pivot, read_table, split_prompts

log = logging.getLogger(__name__)


def cost_unit(data_cfg: Mapping[str, Any]) -> str:
    """The unit of the data's costs: ``cost_unit`` of the data config, seconds by default."""
    unit = data_cfg.get("cost_unit") or "s"
    if not isinstance(unit, str) or len(unit) > 32:
        raise ConfigError(f"data.cost_unit={unit!r}: a short unit name is needed (s, ms, usd, ...)")
    return unit


def load_matrix(
    data_cfg: Mapping[str, Any],
    metric: str,
    backend_specs: Mapping[str, Any] | None = None,
    feedback: str | None = None,
) -> QualityMatrix:
    """The table's ``metric`` as a matrix. Costs: ``data.costs``, else the table's ``cost_s``, else
    the backend config's ``cost_s`` (diffusers) or ``cost`` (remote) in ``backend_specs``.
    ``feedback``: a decision log folder whose scored images join as cells
    (:mod:`t2iroute.training.feedback`); what joined is ``M.feedback_counts``."""
    table = read_table(data_cfg["path"])
    counts = None
    if feedback:
        from t2iroute.training.feedback import feedback_rows

        rows, counts = feedback_rows(feedback, metric, table)
        table = pd.concat([table, rows], ignore_index=True) if len(rows) else table
    fallback = {}
    for b, spec in dict(backend_specs or {}).items():
        if isinstance(spec, Mapping):
            c = spec.get("cost_s", spec.get("cost"))
            if c is not None:
                fallback[str(b)] = c
    M = pivot(
        table,
        metric,
        costs=dict(data_cfg.get("costs") or {}),
        backends=list(data_cfg["backends"]) if data_cfg.get("backends") else None,
        name=str(data_cfg["path"]),
        higher_is_better=data_cfg.get("higher_is_better"),
        fallback_costs=fallback,
    )
    M.feedback_counts = counts
    return M


def fit_predictor(
    predictor_cfg,
    X: np.ndarray,
    Y: np.ndarray,
    featurizer=None,
    texts=None,
    *,
    costs=None,
    higher_is_better: bool = True,
    anchor: bool | str = False,
    backends=None,
    backend_specs=None,
    fill: str = "mf",
):
    """Build and fit the configured predictor on the metric as it is (``Y``, own direction).

    Predictors that judge candidates by routing (``auto``) also get the costs and the direction;
    the prior gets its backends' step budgets (from ``backend_specs``, else the bundled configs).
    ``fill``: how a predictor that does not handle missing cells first fills them: ``mf`` (the
    shared low-rank model, :func:`~t2iroute.predictors.base.mf_fill`) or ``complete`` (the same
    predictor fitted on the rows with every cell, when there are :data:`COMPLETE_FILL_MIN_ROWS`
    of them, else ``mf``): the start of the EM iteration, for tables of complete rows plus
    prompts with one served cell each (the serving loop's).
    """
    if fill not in ("mf", "complete"):
        raise ConfigError(f"fill={fill!r}: use mf or complete")
    spec = _plain(predictor_cfg)
    if isinstance(spec, dict) and spec.get("type") == "prior":
        from t2iroute.training.prior import prior_spec

        spec = prior_spec(spec, backends, backend_specs, featurizer)
    if featurizer is not None:
        spec = resolve_blocks(spec, featurizer.blocks_)
    pred = build_predictor(spec)
    texts = None if texts is None else list(texts)
    if getattr(pred, "type_name", None) == "auto":
        return pred.fit(X, Y, texts=texts, costs=costs, higher_is_better=higher_is_better, anchor=anchor)
    first = None
    if fill == "complete" and not getattr(pred, "handles_missing", False):
        first = complete_rows_fill(lambda: build_predictor(spec), X, Y, texts)
    if first is None:
        return pred.fit(X, Y, texts=texts)
    return pred.fit(X, Y, texts=texts, fill=first)


COMPLETE_FILL_MIN_ROWS = 200


def complete_rows_fill(make, X: np.ndarray, Y: np.ndarray, texts=None, min_rows: int = COMPLETE_FILL_MIN_ROWS):
    """Every cell of ``Y`` as predicted by ``make()`` fitted on the rows with no missing cell;
    None when ``Y`` has no missing cell or fewer than ``min_rows`` complete rows.

    Measured on CEMS clip (seed 0; 400 complete rows plus 4,000 prompts with one random cell each,
    ``predictor=stack``): first filled by ``mf``, the router loses 0.20 CLIP at equal cost; filled
    from the complete rows, it saves 10.6% at equal quality (the 400 rows alone: no saving)."""
    Y = np.asarray(Y, dtype=np.float64)
    complete = np.isfinite(Y).all(axis=1)
    if complete.all() or complete.sum() < min_rows:
        return None
    rows = np.flatnonzero(complete)
    sub = None if texts is None else [texts[i] for i in rows]
    p0 = make().fit(X[rows], Y[rows], texts=sub)
    return np.asarray(p0.predict(X, texts=texts)).reshape(Y.shape)


ANCHOR_BELOW_ROWS = 2000


def _anchor_setting(cfg):
    a = cfg.get("anchor", "auto")
    if a not in (True, False, "auto"):
        raise ConfigError(f"anchor={a!r}: use true, false or auto")
    return a


def anchor_of(cfg, M: QualityMatrix, rows: np.ndarray, predictor=None) -> str | None:
    """The anchor backend, the best single backend on the training ``rows``, or None.

    ``anchor: true`` / ``false`` force it; ``auto``: what ``predictor=auto`` chose by
    cross-validation (``anchored_``), for other predictors anchored below 2,000 training rows.
    """
    a = _anchor_setting(cfg)
    if a == "auto":
        a = getattr(predictor, "anchored_", None)
        if a is None:
            a = len(rows) < ANCHOR_BELOW_ROWS
    if not a:
        return None
    return M.backends[int(np.argmax(backend_means(M.oriented[rows])))]


def routed(q_hat: np.ndarray, M: QualityMatrix, anchor: str | None) -> np.ndarray:
    """Predictions as the router's policies see them, back in the metric's own direction (so that
    ``summarize`` judges exactly what the router does)."""
    if anchor is None:
        return q_hat
    return M.sign * anchor_quality(M.sign * np.asarray(q_hat, float), M.backends.index(anchor))


def selection_of(predictor) -> dict | None:
    """What ``predictor=auto`` chose and why (None for other predictors)."""
    return getattr(predictor, "selection_", None)


def _plain(cfg):
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, (DictConfig, ListConfig)):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:
        pass
    return cfg


def _split(M: QualityMatrix, cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fr = tuple(cfg["split"]["fractions"])
    tr, va, te = split_prompts(M.prompts, M.sources, fractions=fr, seed=int(cfg["seed"]))
    # a prompt that misses a backend only trains: validation and test judge complete rows
    complete = M.complete
    if not complete.all():
        tr = np.sort(np.concatenate([tr, va[~complete[va]], te[~complete[te]]]))
        va, te = va[complete[va]], te[complete[te]]
    if min(len(tr), len(te)) == 0:
        raise ValueError(
            f"split {fr} of {len(M)} prompts ({int(complete.sum())} with every backend) leaves an empty train "
            "or test part" + ("" if complete.all() else ": the test part needs prompts scored on every backend")
        )
    return tr, va, te


def _source_breakdown(q_hat, M: QualityMatrix, te, min_prompts: int = 20) -> dict:
    out = {}
    for src in sorted(set(M.sources[te])):
        m = M.sources[te] == src
        if m.sum() < min_prompts:
            out[src] = {"n_test": int(m.sum()), "skipped": f"fewer than {min_prompts} test prompts"}
            continue
        s = summarize(q_hat[m], M.scores[te][m], M.costs, M.backends, higher_is_better=M.higher_is_better)
        s.pop("curves")
        out[src] = s
    return out


def measure_throughput(router: Router, prompts: list[str], n_batch: int = 1000, n_single: int = 200) -> dict:
    """Routing speed with cold caches: a fresh featurizer without its embedding cache, and the
    predictor as loaded from its state (no word n-grams remembered from evaluating the test part)."""
    featurizer = build_featurizer(router.featurizer.spec())
    for p in featurizer.parts:
        if hasattr(p, "cache"):
            p.cache = False
    r = Router(
        featurizer,
        QualityPredictor.from_state(*router.predictor.get_state()),
        router.backend_names,
        router.costs,
        policy=router.policy,
        higher_is_better=router.higher_is_better,
        anchor=router.anchor,
    )
    batch = [
        prompts[i % len(prompts)] + ("" if i < len(prompts) else f" ({i // len(prompts)})") for i in range(n_batch)
    ]
    t0 = time.perf_counter()
    r.route(batch[:2])  # loads the embedding model; not part of the figures
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    r.route(batch)
    batch_s = time.perf_counter() - t0
    singles = []
    for p in batch[:n_single]:
        t0 = time.perf_counter()
        r.route(p)
        singles.append(time.perf_counter() - t0)
    singles = np.array(singles) * 1000
    return {
        "route_throughput_prompts_per_s": n_batch / batch_s,
        "route_batch_s": batch_s,
        "route_batch_n": n_batch,
        "route_single_ms_p50": float(np.percentile(singles, 50)),
        "route_single_ms_p95": float(np.percentile(singles, 95)),
        "model_load_s": load_s,
        "cache": "cold (embedding cache off)",
    }


def run_bench(cfg) -> dict:
    """Train on train(+val), evaluate on test, write summary.json and curves.png."""
    t_start = time.perf_counter()
    out_dir = Path(cfg["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    metric = str(cfg["metric"])
    M = load_matrix(cfg["data"], metric)
    tr, va, te = _split(M, cfg)
    featurizer = build_featurizer(_plain(cfg["features"]))
    t0 = time.perf_counter()
    with featurizer.without_deadline():  # a whole table, not one routing call
        X = featurizer.transform(list(M.prompts))
    feat_s = time.perf_counter() - t0
    log.info("features %s for %d prompts in %.1fs", X.shape, len(M), feat_s)

    fitkw = dict(costs=M.costs, higher_is_better=M.higher_is_better, anchor=_anchor_setting(cfg), backends=M.backends)
    # 1. headline: fit on train + validation, evaluate on test
    fit_idx = np.concatenate([tr, va])
    t0 = time.perf_counter()
    predictor = fit_predictor(cfg["predictor"], X[fit_idx], M.scores[fit_idx], featurizer, M.prompts[fit_idx], **fitkw)
    fit_s = time.perf_counter() - t0
    # 2. lambda calibration check: fit on train, calibrate on validation, measure on test
    calibration = []
    if cfg.get("calibration", {}).get("budgets") and len(va) > 0:
        if hasattr(predictor, "refit_chosen"):  # auto: the same choice, refitted on train alone
            pred_tr = predictor.refit_chosen(X[tr], M.scores[tr], texts=list(M.prompts[tr]))
        else:
            pred_tr = fit_predictor(cfg["predictor"], X[tr], M.scores[tr], featurizer, M.prompts[tr], **fitkw)
        a_tr = anchor_of(cfg, M, tr, pred_tr)
        q_va = M.sign * routed(pred_tr.predict(X[va], texts=list(M.prompts[va])), M, a_tr)  # oriented
        q_te = M.sign * routed(pred_tr.predict(X[te], texts=list(M.prompts[te])), M, a_tr)
        rows = np.arange(len(te))
        c_lo, c_hi = float(M.costs.min()), float(M.costs[np.argmax(backend_means(M.oriented[tr]))])
        for frac in cfg["calibration"]["budgets"]:
            target = c_lo + float(frac) * (c_hi - c_lo)
            lam = calibrate_lambda(q_va, M.costs, target_mean_cost=target)
            choice = route_scores(q_te, M.costs, lam)
            calibration.append(
                {
                    "target_mean_cost": target,
                    "lambda": lam,
                    "val_mean_cost": float(M.costs[route_scores(q_va, M.costs, lam)].mean()),
                    "test_mean_cost": float(M.costs[choice].mean()),
                    "test_quality": float(M.scores[te][rows, choice].mean()),
                }
            )

    anchor = anchor_of(cfg, M, fit_idx, predictor)
    q_hat = routed(predictor.predict(X[te], texts=list(M.prompts[te])), M, anchor)
    summary: dict[str, Any] = {
        "metric": metric,
        "higher_is_better": M.higher_is_better,
        "data": str(cfg["data"].get("name", cfg["data"]["path"])),
        "data_path": str(cfg["data"]["path"]),
        "data_hash": M.data_hash(),
        "seed": int(cfg["seed"]),
        "n_train": int(len(fit_idx)),
        "n_test": int(len(te)),
        "coverage": M.coverage(fit_idx),  # what trained: observed cells and their cost
        "cost_origin": M.cost_origin,
        "cost_unit": cost_unit(cfg["data"]),
        "predictor": _plain(cfg["predictor"]),
        "anchor": anchor,
        "features": [p.name for p in featurizer.parts],
    }
    summary.update(summarize(q_hat, M.scores[te], M.costs, M.backends, higher_is_better=M.higher_is_better))
    if selection_of(predictor) is not None:
        summary["predictor_selection"] = selection_of(predictor)
    summary["by_source"] = _source_breakdown(q_hat, M, te)
    summary["calibration"] = calibration
    sweep_cfg = _plain(cfg.get("sweep")) or {}
    if sweep_cfg.get("plan"):
        summary["sweep"] = simulate_sweeps(cfg, sweep_cfg, M, X, fit_idx, te, featurizer, summary["router"])
    router = Router(
        featurizer, predictor, M.backends, M.costs, metric=metric, higher_is_better=M.higher_is_better, anchor=anchor
    )
    if cfg.get("throughput", {}).get("enabled", True):
        tp = cfg.get("throughput", {})
        summary.update(
            measure_throughput(router, list(M.prompts[te]), int(tp.get("n_batch", 1000)), int(tp.get("n_single", 200)))
        )
    summary["timings_s"] = {"features_all": feat_s, "fit": fit_s, "total": time.perf_counter() - t_start}
    curves = summary.pop("curves")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "curves.json").write_text(json.dumps(curves))
    plot_curves(summary, curves, out_dir / "curves.png")
    if "sweep" in summary:
        plot_sweep(summary, out_dir / "sweep.png")
    summary["curves"] = curves
    return summary


def _as_list(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def simulate_sweeps(cfg, sweep_cfg, M: QualityMatrix, X, fit_idx, te, featurizer, full: dict) -> dict:
    """``bench sweep.plan=... sweep.share=...``: for each plan and share, mask the training rows
    to the cells the plan would have generated (it sees only those), train the configured
    predictor on them, and judge it on the same test prompts as the full-table router."""
    from t2iroute.training.plans import check_plan, simulate

    plans, shares = _as_list(sweep_cfg.get("plan")), _as_list(sweep_cfg.get("share", 0.5))
    for p in plans:
        for sh in shares:
            check_plan(p, sh, prefix="sweep.")
    train_complete = M.complete[fit_idx]
    rows = fit_idx[train_complete]  # the plans spend a complete table's training prompts
    if not train_complete.all():
        log.info("sweep simulation: %d training prompts miss a backend and are left out", int((~train_complete).sum()))
    full_cost = float(len(rows) * M.costs.sum())
    out = {
        "full_table": {
            "cost_saved_pct": full["cost_saved_pct"],
            "quality_gain_at_equal_cost": full["quality_gain_at_equal_cost"],
        },
        "n_train_prompts": int(len(rows)),
        "runs": [],
    }
    fitkw = dict(costs=M.costs, higher_is_better=M.higher_is_better, anchor=_anchor_setting(cfg), backends=M.backends)
    for plan in plans:
        for share in shares:
            t0 = time.perf_counter()
            mask, seen = simulate(plan, float(share), M.oriented[rows], M.costs, X=X[rows], seed=int(cfg["seed"]))
            keep = mask.any(axis=1)
            Y = M.sign * seen[keep]
            r = rows[keep]
            pred = fit_predictor(cfg["predictor"], X[r], Y, featurizer, M.prompts[r], **fitkw)
            anchor = _anchor_of_rows(cfg, M, Y, pred)
            q_hat = routed(pred.predict(X[te], texts=list(M.prompts[te])), M, anchor)
            s = summarize(q_hat, M.scores[te], M.costs, M.backends, higher_is_better=M.higher_is_better)
            run = {
                "plan": plan,
                "share": float(share),
                "spent_share": float((mask * M.costs[None, :]).sum() / full_cost),
                "observed_cells": int(mask.sum()),
                "prompts": int(keep.sum()),
                "complete_prompts": int(mask.all(axis=1).sum()),
                "cells_by_backend": {b: int(v) for b, v in zip(M.backends, mask.sum(axis=0))},
                "cost_saved_pct": s["router"]["cost_saved_pct"],
                "quality_gain_at_equal_cost": s["router"]["quality_gain_at_equal_cost"],
                "anchor": anchor,
                "s": time.perf_counter() - t0,
            }
            sel = selection_of(pred)
            if sel is not None:
                run["chosen"] = sel.get("chosen")
                run["beats_best_single_cv"] = sel.get("beats_best_single_cv")
            log.info(
                "sweep simulation: plan %s at %.0f%% of the cost: %s%% saved (full table: %s%%)",
                plan,
                100 * float(share),
                None if run["cost_saved_pct"] is None else f"{run['cost_saved_pct']:.1f}",
                None if full["cost_saved_pct"] is None else f"{full['cost_saved_pct']:.1f}",
            )
            out["runs"].append(run)
    return out


def _anchor_of_rows(cfg, M: QualityMatrix, Y: np.ndarray, predictor) -> str | None:
    """:func:`anchor_of` for a masked training table ``Y`` (own direction, NaN: not observed)."""
    a = _anchor_setting(cfg)
    if a == "auto":
        a = getattr(predictor, "anchored_", None)
        if a is None:
            a = len(Y) < ANCHOR_BELOW_ROWS
    if not a:
        return None
    return M.backends[int(np.argmax(backend_means(M.sign * Y)))]


def backend_specs_for(table_backends, specs: Mapping[str, Any]) -> dict[str, dict]:
    """The backend configs (``backends=[...]``) an artifact carries, checked against the table.

    A config whose name is not a backend of the table is an error (a typo would otherwise
    leave a backend that cannot generate); table backends without a config are routed to but
    must be given at load time to generate.
    """
    from t2iroute.backends import build_backend
    from t2iroute.errors import ConfigError

    if not specs:
        return {}
    unknown = sorted(set(specs) - set(table_backends))
    if unknown:
        raise ConfigError(
            f"backends={sorted(specs)}: {unknown} are not backends of the table (it has {list(table_backends)})"
        )
    for name, spec in specs.items():
        build_backend(name, spec)  # validate now, not when the artifact is first used
    missing = [b for b in table_backends if b not in specs]
    if missing:
        log.warning(
            "no backend config for %s: the router routes to them, generate() needs them passed to Router.load", missing
        )
    return {b: dict(specs[b]) for b in table_backends if b in specs}


_ROUTER_KEYS = ("lam", "budget", "mean_quality_floor", "quality_floor", "max_cost", "policy")


def check_router_cfg(r_cfg) -> None:
    """Refuse bad ``router.*`` settings before any fitting (names the key and the value)."""
    from t2iroute.router.policy import _finite

    r_cfg = dict(r_cfg or {})
    unknown = sorted(set(r_cfg) - set(_ROUTER_KEYS))
    if unknown:
        raise ConfigError(f"router.{unknown[0]}: unknown key; use one of {list(_ROUTER_KEYS)}")
    given = {k: r_cfg.get(k) for k in _ROUTER_KEYS if r_cfg.get(k) is not None}
    if len(given) > 1:
        raise ConfigError(f"router: give at most one of {list(_ROUTER_KEYS)}, got {sorted(given)}")
    for key, value in given.items():
        try:
            if key == "policy":
                build_policy(_plain(value))
            else:
                _finite(f"router.{key}", value, minimum=0.0 if key in ("lam", "budget", "max_cost") else None)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"router.{key}={value}: {e}") from e


def default_policy(r_cfg, predictor, M: QualityMatrix, q_cal: np.ndarray, cal_scores: np.ndarray):
    """The artifact's default policy from ``router.*`` (at most one key), calibrated on
    validation predictions ``q_cal`` (own direction) where it has a knob.

    ``lam``: that lambda; ``budget``: a target mean cost, calibrated to a lambda;
    ``mean_quality_floor``: the largest lambda whose mean validation quality stays above it;
    ``quality_floor`` / ``max_cost``: those per-prompt policies; ``policy``: any policy spec.
    None given: the largest lambda whose mean validation quality stays at the best single
    backend's (the cost saved at equal quality, read on validation). If ``predictor=auto`` found no
    candidate that beats the best single backend out of fold, the default routes to that backend.
    """
    given = {k: r_cfg.get(k) for k in _ROUTER_KEYS if r_cfg.get(k) is not None}
    equal_quality = not given  # none given: the cheapest routing at the best single backend's quality
    unknown = sorted(set(r_cfg) - set(_ROUTER_KEYS))
    if unknown:
        raise ConfigError(f"router.{unknown[0]}: unknown key; use one of {list(_ROUTER_KEYS)}")
    if len(given) > 1:
        raise ConfigError(f"router: give at most one of {list(_ROUTER_KEYS)}, got {sorted(given)}")
    qo = M.sign * q_cal  # oriented (and anchored by the caller)
    if equal_quality:
        best_q = float((M.sign * cal_scores).mean(axis=0).max())
        given = {"mean_quality_floor": M.sign * best_q}
    key, value = next(iter(given.items()))
    if key == "budget":
        lam = calibrate_lambda(qo, M.costs, target_mean_cost=float(value))
        policy = LambdaPolicy(lam, calibrated_from={"budget": float(value), "n_prompts": len(q_cal)})
    elif key == "mean_quality_floor":
        lam = calibrate_lambda(qo, M.costs, mean_quality_floor=M.sign * float(value), scores=M.sign * cal_scores)
        policy = LambdaPolicy(lam, calibrated_from={"mean_quality_floor": float(value), "n_prompts": len(q_cal)})
    elif key == "policy":
        policy = build_policy(_plain(value))
    else:
        policy = build_policy({"type": key, key: float(value)})
    if getattr(predictor, "beats_best_single_cv_", True) is False:
        best = M.backends[int(np.argmax(backend_means(M.oriented)))]
        best_cost = float(M.costs[M.backends.index(best)])
        cap = {"budget": value, "max_cost": value}.get(key)
        if cap is not None and best_cost > float(cap):
            log.warning(
                "no predictor beats the best single backend (%s) out of fold, but it costs %.4g, "
                "over router.%s=%s: keeping the %s policy",
                best,
                best_cost,
                key,
                value,
                key,
            )
        else:
            log.warning(
                "no predictor beats the best single backend out of fold: the router's default "
                "policy routes every prompt to %s",
                best,
            )
            policy = FixedPolicy(best)
    return policy


def scorer_bounds(metric: str) -> list[float] | None:
    """The natural bounds ``[low, high]`` a registered scorer declares for ``metric`` (a class
    attribute ``bounds``, e.g. ``(0.0, 1.0)``), where the scorer registered under the metric's
    name has one; None otherwise."""
    from t2iroute import registry
    from t2iroute.router.domain import check_range

    if metric not in registry.names("scorers"):
        return None
    try:
        cls = registry.get("scorers", metric)
    except Exception:  # noqa: BLE001 -- a plug-in that does not import: no bounds, not a failed training
        return None
    b = getattr(cls, "bounds", None)
    if b is None or getattr(cls, "metric", metric) != metric:
        return None
    got = check_range(f"scorer {metric} bounds", list(b))
    if isinstance(got, str):
        log.warning("%s: ignored", got)
        return None
    return list(got)


def metric_range_of(M: QualityMatrix) -> dict[str, Any]:
    """What the artifact records of the metric's range: the lowest and highest score of the
    table (every complete row), and the scorer's declared bounds where it has them."""
    return {"observed": [float(np.nanmin(M.scores)), float(np.nanmax(M.scores))], "bounds": scorer_bounds(M.metric)}


def domain_of(featurizer, X: np.ndarray, rows: np.ndarray, seed: int):
    """The training prompts' domain (out-of-domain notices), or None when too few prompts."""
    from t2iroute.router.domain import Domain

    dom = Domain.fit(X[rows], featurizer=featurizer, seed=seed)
    if dom is None:
        log.info("too few distinct training prompts for an out-of-domain threshold: the router flags none")
    return dom


def _check_floor_in_range(r_cfg, m_range) -> None:
    """A default ``router.quality_floor`` (or quality policy) outside the table's observed range is
    refused before any fitting, naming the range."""
    lo_hi = tuple(m_range["observed"])
    for key, spec in (
        ("quality_floor", {"type": "quality_floor", "quality_floor": r_cfg.get("quality_floor")}),
        ("policy", r_cfg.get("policy")),
    ):
        if r_cfg.get(key) is None:
            continue
        try:
            pol = build_policy(_plain(spec))
            check = getattr(pol, "check_quality_range", None)
            if callable(check):
                check(lo_hi)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"router.{key}: {e}") from None


def run_train(cfg) -> Router:
    """Fit on train, calibrate the default policy on validation, report test metrics, save."""
    out_dir = Path(cfg["out_dir"])
    metric = str(cfg["metric"])
    check_router_cfg(_plain(cfg.get("router", {})))
    if cfg["data"].get("path") is None:
        if cfg.get("feedback"):
            raise ConfigError(f"feedback={cfg['feedback']}: joins a quality table; give data=... too")
        return train_without_table(cfg)
    M = load_matrix(cfg["data"], metric, _plain(cfg.get("backends")) or {}, feedback=cfg.get("feedback"))
    m_range = metric_range_of(M)
    _check_floor_in_range(_plain(cfg.get("router", {})) or {}, m_range)
    specs = backend_specs_for(M.backends, _plain(cfg.get("backends")) or {})
    tr, va, te = _split(M, cfg)
    featurizer = build_featurizer(_plain(cfg["features"]))
    with featurizer.without_deadline():  # a whole table, not one routing call
        X = featurizer.transform(list(M.prompts))
    predictor = fit_predictor(
        cfg["predictor"],
        X[tr],
        M.scores[tr],
        featurizer,
        M.prompts[tr],
        costs=M.costs,
        higher_is_better=M.higher_is_better,
        anchor=_anchor_setting(cfg),
        backends=M.backends,
        backend_specs=specs,
        # served images are one cell each: fill the rest from the complete rows, as replay does
        fill="complete" if cfg.get("feedback") else "mf",
    )
    anchor = anchor_of(cfg, M, tr, predictor)
    cal_idx = va if len(va) else tr[M.complete[tr]]
    q_cal = routed(predictor.predict(X[cal_idx], texts=list(M.prompts[cal_idx])), M, anchor)
    policy = default_policy(_plain(cfg.get("router", {})) or {}, predictor, M, q_cal, M.scores[cal_idx])
    router = Router(
        featurizer,
        predictor,
        M.backends,
        M.costs,
        policy=policy,
        metric=metric,
        higher_is_better=M.higher_is_better,
        anchor=anchor,
        backend_specs=specs,
        metric_range=m_range,
        domain=domain_of(featurizer, X, tr, int(cfg["seed"])),
    )
    q_te = routed(predictor.predict(X[te], texts=list(M.prompts[te])), M, anchor)
    s = summarize(q_te, M.scores[te], M.costs, M.backends, higher_is_better=M.higher_is_better)
    choice = router.policy.oriented(M.sign).choose(M.sign * q_te, M.costs)
    metrics = {
        "test": {k: s[k] for k in ("best_single", "oracle", "router")},
        "at_default_policy": {
            "policy": router.policy.describe(),
            "test_mean_cost": float(M.costs[choice].mean()),
            "test_quality": float(M.scores[te][np.arange(len(te)), choice].mean()),
        },
        "n_train": int(len(tr)),
        "coverage": M.coverage(tr),
        "n_val": int(len(va)),
        "n_test": int(len(te)),
    }
    if getattr(M, "feedback_counts", None) is not None:
        metrics["feedback"] = {"log": str(cfg["feedback"]), **M.feedback_counts}
    sel = selection_of(predictor)
    if sel is not None:
        metrics["predictor_selection"] = sel
        metrics["beats_best_single_cv"] = bool(sel["beats_best_single_cv"])
    data = {
        "path": str(cfg["data"]["path"]),
        "hash": M.data_hash(),
        "metric": metric,
        "higher_is_better": M.higher_is_better,
        "seed": int(cfg["seed"]),
        "cost_origin": M.cost_origin,
        "cost_unit": cost_unit(cfg["data"]),
    }
    path = out_dir / "router"
    router.save(path, metrics=metrics, data=data)
    log.info("router saved to %s (policy %s)", path, router.policy.describe())
    return router


def train_without_table(cfg):
    """``t2iroute train predictor=prior 'backends=[...]'`` with no table: the prior alone, its
    default policy the cheapest backend predicted to reach ``DEFAULT_FLOOR`` of the converged
    quality (any ``router.*`` policy but ``mean_quality_floor``, which needs scores)."""
    from t2iroute.training.prior import DEFAULT_FLOOR, prior_costs, prior_spec

    pcfg = dict(_plain(cfg["predictor"]) or {})
    if pcfg.get("type") != "prior":
        raise ConfigError(
            f"data={cfg['data'].get('name', 'none')}: no quality table; give data=... "
            f"(predictor={pcfg.get('type')} learns from one), or predictor=prior for a router with no table"
        )
    specs = _plain(cfg.get("backends")) or {}
    if not specs:
        raise ConfigError("backends=[]: a router with no table needs its backends (backends=[sd15_10,sd15_20,sd15_50])")
    names = list(specs)
    specs = backend_specs_for(names, specs)
    featurizer = build_featurizer(_plain(cfg["features"]))
    spec = prior_spec(pcfg, names, specs, featurizer)
    costs, unit = prior_costs(pcfg, names, spec["steps"])
    with featurizer.without_deadline():
        width = featurizer.transform(["a photo of a cat"]).shape[1]
    predictor = build_predictor(spec).fit_without_table(width)
    r_cfg = dict(_plain(cfg.get("router", {})) or {})
    given = {k: v for k, v in r_cfg.items() if v is not None}
    if "mean_quality_floor" in given:
        raise ConfigError("router.mean_quality_floor: needs a table to calibrate on; use quality_floor, lam or budget")
    if not given:
        policy = build_policy({"type": "quality_floor", "quality_floor": DEFAULT_FLOOR})
    else:
        key, value = next(iter(given.items()))
        policy = build_policy(_plain(value) if key == "policy" else {"type": key, key: float(value)})
    router = Router(
        featurizer,
        predictor,
        names,
        costs,
        policy=policy,
        metric="prior",
        higher_is_better=True,
        anchor=None,
        backend_specs=specs,
        metric_range={"observed": [0.0, 1.0], "bounds": [0.0, 1.0]},
        domain=None,
    )
    prior = {"steps": spec["steps"], "ceiling": spec["ceiling"], "tau": list(spec.get("tau") or predictor.tau)}
    prior["complexity"] = "llm" if spec["complexity_column"] is not None else "lexical"
    metrics = {"prior": prior, "n_train": 0}
    data = {"path": None, "metric": "prior", "higher_is_better": True, "seed": int(cfg["seed"])}
    data.update(cost_origin="configured" if unit == "s" else "steps", cost_unit=unit)
    path = Path(cfg["out_dir"]) / "router"
    router.save(path, metrics=metrics, data=data)
    log.info("prior router saved to %s (policy %s)", path, router.policy.describe())
    return router


def plot_curves(summary: dict, curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from t2iroute.training.evaluate import better_hull

    hib = bool(summary.get("higher_is_better", True))
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    rc = curves["router"]
    order = np.argsort(rc["cost"])
    ax.plot(np.array(rc["cost"])[order], np.array(rc["quality"])[order], ".", ms=3, color="C0", alpha=0.5)
    hc, hq = better_hull(rc["cost"], rc["quality"], hib)
    ax.plot(hc, hq, "-", color="C0", label="router (over lambda)")
    oc, oq = better_hull(curves["oracle"]["cost"], curves["oracle"]["quality"], hib)
    ax.plot(oc, oq, "--", color="C2", label="oracle (over lambda)")
    bc = np.array([v["cost"] for v in summary["backends"].values()])
    bq = np.array([v["quality"] for v in summary["backends"].values()])
    mc, mq = better_hull(bc, bq, hib)
    ax.plot(mc, mq, ":", color="gray", label="random mix of backends")
    ax.scatter(bc, bq, color="C3", zorder=5, label="single backends")
    for name, v in summary["backends"].items():
        ax.annotate(name, (v["cost"], v["quality"]), textcoords="offset points", xytext=(4, -10), fontsize=8)
    r = summary["router"]
    title = f"{summary.get('data', '')} / {summary['metric']}: router"
    if r.get("cost_saved_pct") is not None:
        title += f" saves {r['cost_saved_pct']:.1f}% at equal quality"
    if r.get("quality_gain_at_equal_cost") is not None:
        title += f", {r['quality_gain_at_equal_cost']:+.3f} at equal cost"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(f"mean cost per prompt ({summary.get('cost_unit', 's')})")
    ax.set_ylabel(f"mean {summary['metric']} ({'higher' if hib else 'lower'} is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_sweep(summary: dict, path: Path) -> None:
    """Cost saved at equal quality against the share of the full sweep's cost, one line per plan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sw = summary["sweep"]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for i, plan in enumerate(dict.fromkeys(r["plan"] for r in sw["runs"])):
        runs = sorted((r for r in sw["runs"] if r["plan"] == plan), key=lambda r: r["spent_share"])
        xs = [100 * r["spent_share"] for r in runs]
        ys = [np.nan if r["cost_saved_pct"] is None else r["cost_saved_pct"] for r in runs]
        ax.plot(xs, ys, "o-", color=f"C{i}", label=plan)
    full = sw["full_table"]["cost_saved_pct"]
    if full is not None:
        ax.axhline(full, color="gray", ls="--", label="full table")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel("share of the full training sweep's cost spent (%)")
    ax.set_ylabel("cost saved at equal quality (%)")
    ax.set_title(f"{summary.get('data', '')} / {summary['metric']}, seed {summary.get('seed')}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
