"""Spearman correlation of complexity scores with human difficulty labels.

    python scripts/serve_llm.py --port 8080 &
    python scripts/validate_llm_complexity.py --base-url http://127.0.0.1:8080/v1 --out outputs/llm-validation

Labels (ordinal, higher = harder):
- PartiPrompts `Challenge`: Basic 1 < Simple Detail 2 < one specific demand 3 (Fine-grained Detail,
  Imagination, Linguistic Structures, Perspective, Properties & Positioning, Quantity, Style & Format,
  Writing & Symbols) < Complex 4 (PartiPrompts' name for prompts combining several demands).
- GenEval tags: single_object 1 < two_object 2 < counting, colors 3 < position, color_attr 4.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PARTI = {"Basic": 1, "Simple Detail": 2, "Complex": 4}
GENEVAL = {"single_object": 1, "two_object": 2, "counting": 3, "colors": 3, "position": 4, "color_attr": 4}


def main() -> None:
    from scipy.stats import spearmanr

    from t2iroute.features.lexical import FEATURE_NAMES, lexical_features
    from t2iroute.features.llm import LLMComplexityFeaturizer, lexical_estimate
    from t2iroute.training.prompts import read_prompts

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--provider", default="openai")
    ap.add_argument("--full-limit", type=int, default=None, help="prompts per set for the (slower) full rubric")
    ap.add_argument("--out", default="outputs/llm-validation")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = {}
    p = read_prompts("partiprompts")
    sets["partiprompts"] = (p.prompt.tolist(), [PARTI.get(c, 3) for c in p.label])
    g = read_prompts("geneval")
    sets["geneval"] = (g.prompt.tolist(), [GENEVAL[t] for t in g.label])
    result = {}
    for name, (prompts, labels) in sets.items():
        labels = np.array(labels)
        row = {"n": len(prompts)}
        lex = np.array([lexical_features(x) for x in prompts])
        row["lexical.n_words"] = spearmanr(lex[:, FEATURE_NAMES.index("n_words")], labels).statistic
        row["lexical.estimate"] = spearmanr([lexical_estimate(x)["complexity"] for x in prompts], labels).statistic
        for rubric in ("score", "full"):
            f = LLMComplexityFeaturizer(
                a.provider, a.model, base_url=a.base_url, rubric=rubric, deadline_s=None
            )  # a whole set: no per-call deadline
            n = len(prompts) if rubric == "score" or not a.full_limit else min(a.full_limit, len(prompts))
            idx = np.random.default_rng(0).permutation(len(prompts))[:n]
            t0 = time.perf_counter()
            X = f.transform([prompts[i] for i in idx])
            dt = time.perf_counter() - t0
            names = f.feature_names_
            lab = labels[idx]
            row[f"llm.{rubric}.n"] = int(n)
            row[f"llm.{rubric}.prompts_per_s"] = n / dt
            row[f"llm.{rubric}.imputed"] = int(X[:, names.index("imputed")].sum())
            row[f"llm.{rubric}.complexity"] = spearmanr(X[:, names.index("complexity")], lab).statistic
            row[f"llm.{rubric}.expected_complexity"] = spearmanr(
                X[:, names.index("expected_complexity")], lab
            ).statistic
            t0 = time.perf_counter()
            f.transform([prompts[i] for i in idx])
            row[f"llm.{rubric}.warm_cache_prompts_per_s"] = n / (time.perf_counter() - t0)
        result[name] = {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()}
        print(name, json.dumps(result[name], indent=1), flush=True)
    (out / "validation.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
