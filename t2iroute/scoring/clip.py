"""CLIPScore through open_clip.

Definition (Hessel et al., 2021): CLIPScore(image, text) = w * max(cos(E_img, E_txt), 0), with
``w = 100`` here (the torchmetrics convention, the scale of the ``clip`` metric in CEMS and most
score tables; Hessel et al. use w = 2.5, pass ``w=2.5`` for that).

``model`` is an open_clip architecture name (``ViT-B-32``, ``ViT-g-14``, ...); ``pretrained`` is
an open_clip tag (downloads: not on machines without a model hub), a local checkpoint file, or
None for random weights (tests).
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np


class CLIPScorer:
    metric = "clip"
    higher_is_better = True

    def __init__(
        self,
        model: str = "ViT-B-32",
        pretrained: str | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 16,
        w: float = 100.0,
        model_config: dict | None = None,
    ):
        self.model_name = model
        self.pretrained = pretrained
        self.device = device
        self.batch_size = int(batch_size)
        self.w = float(w)
        self.model_config = model_config  # register a custom architecture (tests: a tiny one)
        self._model = None
        self._lock = threading.RLock()  # one load; torch modules are not re-entrant across threads

    def _load(self):
        with self._lock:
            return self._load_locked()

    def _load_locked(self):
        if self._model is None:
            from t2iroute._compat import ensure_torchvision

            ensure_torchvision()
            import open_clip

            if self.model_config is not None:
                import json
                import tempfile
                from pathlib import Path

                d = Path(tempfile.mkdtemp(prefix="t2iroute-clipcfg-"))
                (d / f"{self.model_name}.json").write_text(json.dumps(self.model_config))
                open_clip.add_model_config(d)
            import logging

            def no_open_clip(record):  # open_clip logs each failure on the root logger: ours says it once
                return "open_clip" not in record.pathname

            root = logging.getLogger()
            root.addFilter(no_open_clip)
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    self.model_name, pretrained=self.pretrained, device=self.device
                )
            except Exception as e:
                raise RuntimeError(self._why(e)) from e
            finally:
                root.removeFilter(no_open_clip)
            self._model = model.eval()
            self._preprocess = preprocess
            self._tokenizer = open_clip.get_tokenizer(self.model_name)
        return self._model

    def _why(self, e: Exception) -> str:
        """One line on why the model could not be built: an open_clip tag whose weights are not on
        this machine and cannot be downloaded, a checkpoint file that is not there, or open_clip's
        own first line."""
        import os

        what = f"cannot build CLIP model '{self.model_name}' (pretrained={self.pretrained!r})"
        text = " ".join(str(e).split())
        p = self.pretrained
        if isinstance(p, str) and "Failed to download" in text:
            offline = any(
                os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
                for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
            )
            how = "the model hub is off (HF_HUB_OFFLINE=1)" if offline else "the model hub cannot be reached"
            return (
                f"{what}: the weights of tag '{p}' are not on this machine and {how}; download them once "
                "online, or give a local checkpoint file as pretrained (scorer.pretrained=FILE on the command line)"
            )
        if isinstance(p, str) and "not a known tag or valid file path" in text:
            looks_like_path = os.sep in p or p.endswith((".pt", ".pth", ".bin", ".safetensors"))
            return f"{what}: " + (
                f"no such checkpoint file {p}"
                if looks_like_path
                else f"'{p}' is not an open_clip tag of {self.model_name} nor a checkpoint file"
            )
        return f"{what}: {text[:300]}"

    def warmup(self) -> None:
        """Load the model now (a scorer that cannot load fails here, before any image is made)."""
        self._load()

    def embed(self, images: Sequence[Any], prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        model = self._load()
        img_out, txt_out = [], []
        with torch.inference_mode():
            for i in range(0, len(prompts), self.batch_size):
                ims = torch.stack([self._preprocess(im.convert("RGB")) for im in images[i : i + self.batch_size]])
                toks = self._tokenizer(list(prompts[i : i + self.batch_size]))
                fi = model.encode_image(ims.to(self.device)).float()
                ft = model.encode_text(toks.to(self.device)).float()
                img_out.append(torch.nn.functional.normalize(fi, dim=-1).cpu().numpy())
                txt_out.append(torch.nn.functional.normalize(ft, dim=-1).cpu().numpy())
        return np.vstack(img_out), np.vstack(txt_out)

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if not len(images):
            return []
        fi, ft = self.embed(images, prompts)
        cos = (fi * ft).sum(axis=1)
        return [float(self.w * max(c, 0.0)) for c in cos]
