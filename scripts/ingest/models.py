"""The served models as the ingest pipeline calls them, over Triton's gRPC (docs/models.md)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from converters.errors import UserError

PAGE_ELEMENTS, OCR, CAPTIONS, EMBED = "yolox_page_elements", "eclair", "caption_selection", "e5_small_v2_text"
CAPTION_CORE = "deberta_large"  # what caption_selection calls, in batches of rows
# The served models whose manifests make the stack fingerprint (wrappers and the cores they call).
FINGERPRINT_MODELS = (PAGE_ELEMENTS, "yolox_uint8", OCR, CAPTIONS, "deberta_large", EMBED, "e5_small_v2")


def stack_fingerprint(folders: dict[str, Path]) -> str:
    """sha256 over each served model's manifest fingerprint (name:fingerprint, sorted by name)."""
    parts = []
    for name in FINGERPRINT_MODELS:
        manifest = Path(folders[name]) / "manifest.json" if name in folders else None
        if manifest is None or not manifest.is_file():
            raise UserError(f"no manifest for {name} (looked in {manifest or 'nothing: not served'}); "
                            "run `python -m scripts.stack up` first.")
        parts.append(f"{name}:{json.loads(manifest.read_text())['fingerprint']}")
    return hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()


def folders_in(repo: Path) -> dict[str, Path]:
    """A model repository's folders by model name (what `stack.model_folders` gives for a stack)."""
    return {name: Path(repo) / name for name in FINGERPRINT_MODELS}


class Models:
    """One gRPC client; tritonclient's gRPC client may be shared between threads."""

    def __init__(self, url: str, timeout_s: float = 600.0):
        import tritonclient.grpc as grpc

        self._grpc = grpc
        self.timeout_s = timeout_s
        self.client = grpc.InferenceServerClient(url)
        try:
            missing = [m for m in (PAGE_ELEMENTS, OCR, CAPTIONS, EMBED) if not self.client.is_model_ready(m)]
        except Exception as exc:
            raise UserError(f"Triton does not answer at {url} ({type(exc).__name__}); "
                            "run `python -m scripts.stack up` first.") from exc
        if missing:
            raise UserError(f"Triton at {url} does not serve {', '.join(missing)} (not ready); "
                            "run `python -m scripts.stack up` first.")
        self.embed_batch = self.max_batch(EMBED)

    def max_batch(self, model: str) -> int:
        """The served model's max batch (for ECLAIR, its decoder slots)."""
        config = self.client.get_model_config(model, as_json=True)["config"]
        return max(1, int(config.get("max_batch_size", 1)))

    def close(self) -> None:
        self.client.close()

    def _infer(self, model: str, feeds: dict[str, tuple[np.ndarray, str]], outputs: list[str]) -> dict:
        grpc = self._grpc
        tensors = []
        for name, (value, wire) in feeds.items():
            tensor = grpc.InferInput(name, list(value.shape), wire)
            tensor.set_data_from_numpy(value)
            tensors.append(tensor)
        result = self.client.infer(model, tensors, outputs=[grpc.InferRequestedOutput(o) for o in outputs],
                                   client_timeout=self.timeout_s)
        return {o: result.as_numpy(o) for o in outputs}

    def page_elements(self, pixels: np.ndarray) -> list[tuple[str, tuple[float, ...], float]]:
        """(label, normalised x1,y1,x2,y2, score) for each element on one page."""
        out = self._infer(PAGE_ELEMENTS, {"pixels": (pixels[None], "UINT8")}, ["boxes", "labels", "scores"])
        return [(label.decode(), tuple(float(v) for v in box), float(score))
                for box, label, score in zip(out["boxes"][0], out["labels"][0], out["scores"][0])]

    def ocr(self, canvas: np.ndarray) -> str:
        """ECLAIR's text for one 1280x1024 canvas (pad_page's)."""
        out = self._infer(OCR, {"image": (canvas[None], "UINT8")}, ["text"])
        value = out["text"].reshape(-1)[0]
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

    def caption(self, candidates: list[str]) -> str:
        """caption_selection's best candidate ("" when none reaches its threshold)."""
        if not candidates:
            return ""
        out = self._infer(CAPTIONS, {"candidates": (np.array(candidates, dtype=object), "BYTES")}, ["caption"])
        value = out["caption"].reshape(-1)[0]
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

    def embed(self, texts: list[str], input_type: str = "passage") -> np.ndarray:
        """E5 embeddings (unit length), float32 [len(texts), 384]; at most `embed_batch` texts."""
        text = np.array([[t] for t in texts], dtype=object)
        kind = np.array([[input_type]] * len(texts), dtype=object)
        out = self._infer(EMBED, {"text": (text, "BYTES"), "input_type": (kind, "BYTES")}, ["embedding"])
        return out["embedding"].astype(np.float32)
