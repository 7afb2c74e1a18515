"""Where ingest's chunk store opens, measured on this host: on a thread of the ingest process (as
before scripts/ingest/store_process.py) or in a process of its own (as now). LanceDB's import is
about 2 s of Python; on a thread it shares the GIL with the threads that send the first pages.

The models are stand-ins with fixed latencies (no Triton, no GPU), so the figures are the
pipeline's own: `stack ingest`'s code on the given PDF, each variant run in turn, `--runs` times,
each into a fresh store. Prints per run the seconds, pages/s, and when page elements and the
store's first write began.

    python3 benchmarks/ingest_store_startup.py PDF [--runs 3]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.ingest import pipeline  # noqa: E402
from scripts.ingest.store import Store  # noqa: E402
from scripts.ingest.store_process import StoreProcess  # noqa: E402

LATENCY_S = {"elements": 0.02, "ocr": 0.2, "caption": 0.005, "embed": 0.005}
marks: dict[str, float] = {}


class StandInModels:
    """scripts.ingest.models.Models' calls, answering after a fixed sleep."""
    embed_batch = 64

    def __init__(self, url: str):
        pass

    def max_batch(self, model: str) -> int:
        return 16

    def close(self) -> None:
        pass

    def page_elements(self, pixels):
        marks.setdefault("elements", time.monotonic())
        time.sleep(LATENCY_S["elements"])
        return [("table", (0.1, 0.1, 0.5, 0.3), 0.9)]

    def ocr(self, canvas) -> str:
        time.sleep(LATENCY_S["ocr"])
        return "Scanned text of a page. " * 20

    def caption(self, candidates) -> str:
        time.sleep(LATENCY_S["caption"])
        return candidates[0] if candidates else ""

    def embed(self, texts, input_type="passage"):
        time.sleep(LATENCY_S["embed"])
        vectors = np.ones((len(texts), 384), np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class ThreadStore:
    """The store as it opened before: on a thread of the ingest process."""

    def __init__(self, folder: Path):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="ingest-store")
        self.opening = self.pool.submit(Store, folder)

    def ingested(self):
        return self.opening.result().ingested()

    def replace_document(self, document, rows):
        marks.setdefault("store", time.monotonic())
        self.opening.result().replace_document(document, rows)

    def export_parquet(self):
        return self.opening.result().export_parquet()

    def close(self):
        self.pool.shutdown(wait=True)


class TimedStoreProcess(StoreProcess):
    def replace_document(self, document, rows):
        marks.setdefault("store", time.monotonic())
        super().replace_document(document, rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pdf", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    pipeline.Models = StandInModels
    print(f"{args.pdf}: stand-in models {LATENCY_S} s a call; raster workers as `stack ingest` starts them")
    for run in range(args.runs):
        for name, store in (("thread", ThreadStore), ("process", TimedStoreProcess)):
            pipeline.StoreProcess = store
            marks.clear()
            with tempfile.TemporaryDirectory() as out:
                started = time.monotonic()
                report = pipeline.ingest([args.pdf], Path(out), "stand-in", "fingerprint", progress=False)
            print(f"run {run + 1}, store on a {name}: {report.seconds:.2f} s, {report.pages / report.seconds:.1f} "
                  f"pages/s ({report.pages} pages, {report.chunks} chunks); page elements began at "
                  f"{marks['elements'] - started:.2f} s, the first store write at {marks['store'] - started:.2f} s",
                  flush=True)


if __name__ == "__main__":
    main()
