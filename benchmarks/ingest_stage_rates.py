"""Each ingest stage alone against the served models, with the pipeline's own client calls and
in-flight counts, on the pages of a document already ingested; then the bound each puts on the
document's pages/s (a stage's items/s over its items per page), and end to end against the
slowest stage. Caption calls are the pipeline's: one per table or chart that a page-elements pass
finds, with the text-layer lines near its box as candidates (a scanned page has no text layer
here, so its elements' calls are the empty ones the pipeline makes where OCR finds no lines).

    python -m benchmarks.ingest_stage_rates GRPC_URL PDF STORE_DIR END_TO_END_PAGES_PER_S
"""
from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scripts.ingest.batching import CallBatcher
from scripts.ingest.chunks import caption_candidates
from scripts.ingest.models import Models
from scripts.ingest.pipeline import Stage, stage_in_flight
from scripts.ingest.sources import Document
from scripts.ingest.store import Store
from triton_models.eclair.pages import pad_page


def timed(workers: int, fn, items: list) -> float:
    """items/s of `fn` over `items` with `workers` calls in flight (after one warm-up call)."""
    if not items:
        return float("inf")
    fn(items[0])
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fn, items))
    return len(items) / (time.perf_counter() - started)


def embedded(models: Models, slots: int, pages: list[list[str]]) -> float:
    """chunks/s of the pipeline's embedding calls (CallBatcher) for every page's chunks at once."""
    models.embed(pages[0][:1])
    stage = Stage("embed", slots)
    batcher = CallBatcher(models.embed, stage, models.embed_batch, slots)
    try:
        started = time.perf_counter()
        futures = [future for page in pages for future in batcher.submit(page)]
        for future in futures:
            future.result()
        seconds = time.perf_counter() - started
    finally:
        stage.shutdown()
    return sum(map(len, pages)) / seconds


def main(url: str, pdf: Path, store_dir: Path, end_to_end: float) -> None:
    models = Models(url)
    doc = Document(pdf)
    pages = [doc.page(i).fit_for_elements() for i in range(len(doc))]  # as the pipeline's raster workers
    doc.close()
    rows = [r for r in Store(store_dir, create=False).rows().to_pylist() if r["document"] == str(pdf)]
    scanned = [pad_page(p.pixels)[0] for p in pages if not p.has_text_layer]
    found = [models.page_elements(p.elements_input) for p in pages]
    candidates = [caption_candidates(page.lines, box) for page, elements in zip(pages, found)
                  for label, box, _ in elements if label in ("table", "chart")]
    texts = [r["text"] for r in rows]
    in_flight = stage_in_flight(models)
    by_page: dict[int, list[str]] = {}  # the pipeline submits each page's chunks to its CallBatcher
    for row in rows:
        by_page.setdefault(row["page"], []).append(row["text"])
    stages = [  # name, items/s alone, items per document page, unit
        ("elements", timed(in_flight["elements"], models.page_elements, [p.elements_input for p in pages]), 1.0, "pages"),
        ("ocr", timed(in_flight["ocr"], models.ocr, scanned), len(scanned) / len(pages), "scanned pages"),
        ("captions", timed(in_flight["captions"], models.caption, candidates), len(candidates) / len(pages), "calls"),
        ("embed", embedded(models, in_flight["embed"], list(by_page.values())) if texts else float("inf"),
         len(texts) / len(pages), "chunks"),
    ]
    models.close()
    print(f"{pdf.name}: {len(pages)} pages ({len(scanned)} scanned), {len(rows)} chunks, {len(candidates)} caption calls")
    print("| stage | alone, items/s | items per page | bound, pages/s |")
    print("| --- | --- | --- | --- |")
    bounds = {}
    for name, rate, per_page, unit in stages:
        bounds[name] = rate / per_page if per_page else float("inf")
        print(f"| {name} | {rate:,.1f} {unit}/s | {per_page:.2f} | {bounds[name]:,.1f} |")
    slowest = min(bounds, key=bounds.get)
    print(f"end to end {end_to_end:.2f} pages/s = {end_to_end / bounds[slowest]:.2f} of the slowest stage alone "
          f"({slowest}, {bounds[slowest]:.2f} pages/s)")
    # each stage above had the GPU to itself; in the pipeline, without MPS, they take turns on it (one
    # CUDA context per model process, time-sliced), so their times a page added up bound one GPU
    shared = 1.0 / sum(1.0 / bound for bound in bounds.values())
    print(f"end to end {end_to_end:.2f} pages/s = {end_to_end / shared:.2f} of the stages' times a page added up "
          f"({shared:.2f} pages/s: a bound where they take turns on one GPU, as without MPS)")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4]))
