"""Served images as training cells: ``t2iroute train data=... feedback=LOG`` (a decision log folder).

Each logged image that received a score is one observed (prompt, backend) cell of the metric:
its ``user`` score where a person gave one, else its ``autoscore``. A cell joins the table's row
of the same prompt text (a prompt the sweep already has), else a row of its own
(``prompt_id`` ``log:<sha256 prefix>``, source ``feedback``); several scores of one cell are
averaged, as several seeds are. Rows from the log have missing cells by nature: they train, and
never enter validation or test (those judge complete rows). Records logged without their prompt
text (``log.prompts=false``) are counted and left out: training featurizes prompt text.
Propensities are logged for weighting but not used: the predictors learn quality given the
prompt, which the choice of backend does not bias.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from t2iroute.errors import ConfigError
from t2iroute.router.decisions import read_log

log = logging.getLogger(__name__)


def feedback_rows(log_dir, metric: str, table: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The scored cells of the log ``log_dir`` as quality-table rows of ``metric``, and counts."""
    try:
        df = read_log(log_dir)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"feedback={log_dir}: {e}") from None
    score = df["score_user"].where(df["score_user"].notna(), df["score_autoscore"])
    scored = df[score.notna()].assign(score=score[score.notna()])
    counts = {"logged": int(len(df)), "scored": int(len(scored))}
    other = sorted(set(scored["metric"].dropna()) - {metric})
    if other:
        raise ConfigError(
            f"feedback={log_dir}: scores of metric {other} (the router that served them routed on it); "
            f"this training uses metric={metric}"
        )
    no_text = scored["prompt"].isna()
    counts["without_prompt_text"] = int(no_text.sum())
    if no_text.any():
        log.warning(
            "feedback: %d scored image(s) were logged without their prompt (log.prompts=false): left out",
            int(no_text.sum()),
        )
    scored = scored[~no_text]
    known = set(table["backend"].unique())
    unknown = sorted(set(scored["backend"]) - known)
    if unknown:
        log.warning("feedback: scores of backends the table does not have %s: left out", unknown)
        scored = scored[scored["backend"].isin(known)]
    ids = dict(zip(table["prompt"].astype(str), table["prompt_id"].astype(str)))
    prompt_id = [ids.get(p) or f"log:{h[:16]}" for p, h in zip(scored["prompt"], scored["prompt_sha256"])]
    rows = pd.DataFrame(
        {
            "prompt_id": prompt_id,
            "prompt": scored["prompt"].astype(str).to_numpy(),
            "backend": scored["backend"].to_numpy(),
            "metric": metric,
            "score": scored["score"].astype(float).to_numpy(),
            "seed": scored["seed"].fillna(0).astype(np.int64).to_numpy(),
            "source": "feedback",
        }
    )
    counts["cells"] = int(len(rows))
    counts["joined_table_prompts"] = int(sum(p in set(ids.values()) for p in prompt_id))
    return rows, counts
