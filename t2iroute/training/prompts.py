"""Prompt files: txt (one per line), tsv/csv (a prompt column), jsonl, or a bundled set by name."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from t2iroute.paths import bundled

BUNDLED = {
    "partiprompts": "prompts/partiprompts.tsv",
    "geneval": "prompts/geneval_metadata.jsonl",
    "testbed": "prompts/testbed.jsonl",  # generated: t2iroute.testbed.scenes.prompt_set()
}
_PROMPT_COLUMNS = ("prompt", "Prompt", "text", "caption")
_ID_COLUMNS = ("prompt_id", "id")


def read_prompts(spec: str | Path, *, limit: int | None = None) -> pd.DataFrame:
    """-> DataFrame(prompt_id, prompt, source [, label]). Errors name the file and the line."""
    spec = str(spec)
    path = Path(bundled(BUNDLED[spec])) if spec in BUNDLED else Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path}: no such file (or a bundled set: {sorted(BUNDLED)})")
    stem = spec if spec in BUNDLED else path.stem
    name = path.name.lower()
    label = None
    if name.endswith((".txt", ".jsonl")):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"prompt file {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if name.endswith(".txt"):
        lines = text.splitlines()
        prompts = [ln.strip() for ln in lines if ln.strip()]
        ids = None
    elif name.endswith((".tsv", ".csv")):
        try:
            df = pd.read_csv(path, sep="\t" if name.endswith(".tsv") else ",")
        except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise ValueError(f"prompt file {path}: unreadable ({type(e).__name__}: {e})") from None
        col = next((c for c in _PROMPT_COLUMNS if c in df.columns), None)
        if col is None:
            raise ValueError(f"prompt file {path}: no prompt column (one of {_PROMPT_COLUMNS}); has {list(df.columns)}")
        df = df[df[col].notna()]
        prompts = df[col].astype(str).str.strip().tolist()
        idc = next((c for c in _ID_COLUMNS if c in df.columns), None)
        ids = df[idc].astype(str).tolist() if idc else None
        for lc in ("Challenge", "category", "Category", "tag"):
            if lc in df.columns:
                label = df[lc].astype(str).tolist()
                break
    elif name.endswith(".jsonl"):
        prompts, ids, label = [], [], []
        for n, ln in enumerate(text.splitlines(), 1):
            if not ln.strip():
                continue
            try:
                obj = json.loads(ln)
            except json.JSONDecodeError as e:
                raise ValueError(f"prompt file {path}: line {n} is not JSON ({e.msg})") from e
            text = next((obj[c] for c in _PROMPT_COLUMNS if c in obj), None) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                raise ValueError(f"prompt file {path}: line {n} has no 'prompt' string")
            prompts.append(text.strip())
            ids.append(str(obj.get("prompt_id", obj.get("id", ""))) or None)
            label.append(str(obj.get("tag", "")))
        ids = None if any(i is None for i in ids) else ids
    else:
        raise ValueError(f"prompt file {path}: unknown format (use .txt, .tsv, .csv or .jsonl)")
    keep = [i for i, p in enumerate(prompts) if p]
    if not keep:
        raise ValueError(f"prompt file {path}: no prompts")
    out = pd.DataFrame(
        {
            "prompt_id": [ids[i] for i in keep] if ids else [f"{stem}-{i:05d}" for i in keep],
            "prompt": [prompts[i] for i in keep],
            "source": stem,
        }
    )
    if label is not None:
        out["label"] = [label[i] for i in keep]
    if out.prompt_id.duplicated().any():
        raise ValueError(
            f"prompt file {path}: duplicate prompt ids {out.prompt_id[out.prompt_id.duplicated()].head(3).tolist()}"
        )
    return out.head(limit) if limit else out
