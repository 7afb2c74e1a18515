"""The ingest pipeline: pages rasterised on a thread pool while earlier pages are on the models;
one thread pool per model stage, so that requests are in flight to every model at once.

Per page: raster (worker processes, scripts/ingest/raster.py) -> page elements (yolox_page_elements)
and, where the page needs it, OCR (eclair) at the same time -> caption_selection for each
table/chart -> chunks -> their embeddings (e5_small_v2_text, passage; the chunks of every page
waiting join in calls of up to the model's max batch, scripts/ingest/batching.py). Per document:
its rows are written in one step, only once the whole document succeeded. The page-elements and
OCR stages keep twice their model's max batch in flight (for ECLAIR, its decoder slots), so Triton
always has a full batch to form and the next one waiting; pages bound for OCR wait for each other up
to `ocr_hold_s` first (batching.GroupGate), so that the decoder steps for many pages at once. Embedding page by page, rather
than a document's chunks once all its pages are done, keeps the last stage from running alone at
the end of a run; the raster workers start while the store and the models are being opened.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from converters.errors import UserError

from scripts.ingest.batching import CallBatcher, GroupGate
from scripts.ingest.chunks import CAPTION_CANDIDATES, caption_candidates, ocr_lines, page_chunks
from scripts.ingest.models import CAPTION_CORE, OCR, PAGE_ELEMENTS, Models
from scripts.ingest.raster import Rasteriser
from scripts.ingest.sources import Document, InputError, Page, find_inputs, sha256
from scripts.ingest.store import PARQUET, Store, exported_documents
from triton_models.eclair.pages import pad_page

OCR_MODES = ("auto", "always", "never")
# How long a page bound for OCR may wait for others (GroupGate); at about 7 scanned pages/s (run 12)
# that gathers a dozen or more, and a page decodes in 0.3 to 1 s anyway.
OCR_HOLD_S = 2.0
# Embedding calls in flight: each carries the chunks of every page waiting, up to the model's max batch
# (scripts/ingest/batching.py); two per served instance of the text model, as the stack serves two.
EMBED_IN_FLIGHT = 4


class StageTimes(NamedTuple):
    """A stage's figures for the report: its busy time, and when (seconds from the run's start) its
    first call began and its last ended, which shows how much of the run's start and end it sat out."""
    items: int
    busy_s: float
    first_s: float
    last_s: float


class Stage:
    """A thread pool plus its busy time: the union of the intervals with a call in flight."""

    def __init__(self, name: str, workers: int):
        self.name, self.pool = name, ThreadPoolExecutor(workers, thread_name_prefix=f"ingest-{name}")
        self.items, self.busy_s = 0, 0.0
        self.first, self.last = None, None  # time.monotonic() of the first call's start, the last's end
        self._lock, self._active, self._since = threading.Lock(), 0, 0.0

    def submit(self, fn, *args, items: int = 1) -> Future:
        def run():
            with self._lock:
                if self._active == 0:
                    self._since = time.monotonic()
                    self.first = self._since if self.first is None else self.first
                self._active += 1
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._active -= 1
                    self.items += items
                    if self._active == 0:
                        self.last = time.monotonic()
                        self.busy_s += self.last - self._since
        return self.pool.submit(run)

    def times(self, started: float) -> StageTimes:
        """This stage's figures, with `started` (time.monotonic()) as the run's start."""
        return StageTimes(self.items, self.busy_s, (self.first or started) - started, (self.last or started) - started)

    def rate(self) -> float:
        return self.items / self.busy_s if self.busy_s > 0 else 0.0

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class Report:
    documents: int = 0
    ingested: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    pages: int = 0
    chunks: int = 0
    seconds: float = 0.0
    stages: dict[str, StageTimes] = field(default_factory=dict)
    ocr_groups: list[int] = field(default_factory=list)  # pages in each group sent to OCR together
    ocr_released_by: list[str] = field(default_factory=list)  # why each group went (batching.GroupGate)
    parquet: Path | None = None
    start_up: dict[str, float] = field(default_factory=dict)  # seconds into the run each step of its start ended

    def mark(self, step: str, started: float) -> None:
        self.start_up.setdefault(step, time.monotonic() - started)

    @property
    def pages_per_s(self) -> float:
        return self.pages / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        out = [f"{len(self.ingested)} ingested, {len(self.skipped)} skipped (already stored with the same sha256 and "
               f"stack fingerprint), {len(self.failures)} failed; {self.pages} pages, {self.chunks} chunks in "
               f"{self.seconds:.1f} s: {self.pages_per_s:.2f} pages/s end to end"]
        for name, (items, busy, first, last) in self.stages.items():
            unit = "chunks" if name == "embed" else "pages" if name in ("raster", "elements", "ocr") else "items"
            rate = f"{items / busy:.2f} {unit}/s of busy time" if busy > 0 else "idle"
            span = f" (from {first:.1f} to {last:.1f} s)" if busy > 0 else ""
            out.append(f"  {name:<9} {items:>5} {unit:<6} busy {busy:6.1f} s{span}: {rate}")
        if self.start_up:
            out.append("  start-up: " + ", ".join(f"{step} at {at:.2f} s" for step, at in
                                                  sorted(self.start_up.items(), key=lambda item: item[1])))
        if self.ocr_groups:
            why = ", ".join(f"{reason} {self.ocr_released_by.count(reason)}" for reason in dict.fromkeys(self.ocr_released_by))
            out.append(f"  OCR pages went in {len(self.ocr_groups)} group(s) of {min(self.ocr_groups)} to "
                       f"{max(self.ocr_groups)} (mean {sum(self.ocr_groups) / len(self.ocr_groups):.1f}; {why})")
        if self.failures:
            out.append("failed:")
            out.extend(f"  {failure}" for failure in self.failures)
        return out


def stage_in_flight(models: Models) -> dict[str, int]:
    """Calls in flight per model stage: twice what the model batches at once. caption_selection does
    not batch requests itself (each is one element's candidates); its core, deberta_large, batches
    rows, so enough elements are in flight to fill two of its batches."""
    return {"elements": 2 * models.max_batch(PAGE_ELEMENTS), "ocr": 2 * models.max_batch(OCR),
            "captions": max(2, 2 * models.max_batch(CAPTION_CORE) // CAPTION_CANDIDATES),
            "embed": EMBED_IN_FLIGHT}


def ingest(paths: list[Path], out: Path, grpc_url: str, fingerprint: str, ocr: str = "auto",
           progress: bool = True, ocr_hold_s: float = OCR_HOLD_S) -> Report:
    """Ingest `paths` into the store in `out`; every bad input is a failure in the report, and the
    other documents go on."""
    from tqdm import tqdm

    if ocr not in OCR_MODES:
        raise ValueError(f"ocr must be one of {OCR_MODES}, got {ocr!r}")
    started = time.monotonic()
    report = Report()
    rasteriser = Rasteriser().warm()  # worker processes start while the rest is opened
    report.mark("raster workers started", started)
    # LanceDB's import takes about 2 s: the store opens while the first pages go to the models, and
    # what is already stored is read without it where the store's Parquet export allows
    opener = ThreadPoolExecutor(1, thread_name_prefix="ingest-store")
    opening = opener.submit(Store, out)
    opening.add_done_callback(lambda _: report.mark("store open", started))
    opener.shutdown(wait=False)
    try:
        files, report.failures = find_inputs([Path(p) for p in paths])
        report.documents = len(files)
        done = exported_documents(out)
        if done is None:
            done = opening.result().ingested()
        models = Models(grpc_url)
        report.mark("models connected", started)
    except BaseException:
        rasteriser.close()
        raise
    stages: dict[str, Stage] = {}
    ocr_gate: GroupGate | None = None
    pools: list[ThreadPoolExecutor] = []  # shut down before the stages, which they call
    bar = tqdm(total=0, unit="page", desc="ingest", disable=not progress, dynamic_ncols=True)
    bar_lock = threading.Lock()

    def process_page(path: Path, index: int):
        counted = True  # in the OCR gate's undecided pages until it joins or is decided
        try:
            page: Page = stages["raster"].submit(rasteriser.page, path, index).result()
            elements = stages["elements"].submit(models.page_elements, page.elements_input)
            needs_ocr = ocr == "always" or (ocr == "auto" and not page.has_text_layer)
            counted = False
            if needs_ocr:
                ocr_gate.join()  # until the pages bound for OCR with it go together
            else:
                ocr_gate.decided()
        finally:
            if counted:  # it failed before knowing: the pages held must not wait for it
                ocr_gate.decided()
        height, width = page.pixels.shape[:2]
        lines = list(page.lines)
        if needs_ocr:
            canvas, scale = pad_page(page.pixels)
            text = stages["ocr"].submit(models.ocr, canvas).result()
            lines = ([] if ocr == "always" else lines) + ocr_lines(text, scale, (height, width))
        found = elements.result()
        captions = {i: stages["captions"].submit(models.caption, caption_candidates(lines, box))
                    for i, (label, box, _) in enumerate(found) if label in ("table", "chart")}
        chunks = page_chunks(page.number, lines, found, {i: f.result() for i, f in captions.items()})
        if needs_ocr:  # the page's text is ECLAIR's (auto: the page has no text layer)
            for chunk in chunks:
                chunk.source = "ocr"
        parts = embedder.submit([c.text for c in chunks])
        vectors = np.concatenate([p.result() for p in parts]) if parts else np.zeros((0, 384), np.float32)
        with bar_lock:
            bar.update(1)
            bar.set_postfix_str(f"{bar.n / max(time.monotonic() - started, 1e-9):.2f} pages/s")
        return chunks, vectors

    def process_document(path: Path, digest: str, page_futures: list[Future]) -> list[dict]:
        try:
            pages = [f.result() for f in page_futures]
        finally:
            wait(page_futures)  # a failed page fails the document; its other pages finish first
        rows = [(c, vector) for chunks, vectors in pages for c, vector in zip(chunks, vectors)]
        return [{"document": str(path), "sha256": digest, "page": c.page, "chunk": n, "element": c.element,
                 "box": [float(v) for v in c.box], "text": c.text, "embedding": vector.tolist(),
                 "fingerprint": fingerprint, "source": c.source} for n, (c, vector) in enumerate(rows)]

    pending = []  # (path, pages, future of rows)
    gone = None  # the error of a server that stopped answering: the run stops there
    try:
        in_flight = stage_in_flight(models)
        ocr_gate = GroupGate(models.max_batch(OCR), ocr_hold_s)
        stages.update({"raster": Stage("raster", rasteriser.workers), **{n: Stage(n, k) for n, k in in_flight.items()}})
        # a chunk the model refuses fails its own page, not the other documents sharing its call
        embedder = CallBatcher(models.embed, stages["embed"], models.embed_batch, in_flight["embed"],
                               isolate=lambda error: not server_gone(error))
        # a thread per page in flight: at page elements, at OCR, rendering, and held for OCR (a group's worth)
        pages_pool = ThreadPoolExecutor(in_flight["elements"] + in_flight["ocr"] + rasteriser.workers + ocr_gate.size,
                                        thread_name_prefix="ingest-page")
        docs_pool = ThreadPoolExecutor(2, thread_name_prefix="ingest-doc")
        pools += [pages_pool, docs_pool]
        # one undecided page of the loop's own until every document is submitted, so that pages held
        # for OCR do not go part-full while the next document is still being read
        ocr_gate.expect(1)
        report.mark("stages set up", started)
        for path in files:
            try:
                digest = sha256(path)
                if (digest, fingerprint) in done:
                    report.skipped.append(str(path))
                    continue
                doc = Document(path)  # opened here to count and check it; the workers render its pages
                pages = len(doc)
                doc.close()
            except InputError as exc:
                report.failures.append(str(exc))
                continue
            except OSError as exc:
                report.failures.append(f"{path}: cannot be read ({exc.strerror or exc}).")
                continue
            with bar_lock:
                bar.total += pages
                bar.refresh()
            ocr_gate.expect(pages)
            report.mark("first pages sent", started)
            futures = [pages_pool.submit(process_page, path, i) for i in range(pages)]
            pending.append((path, pages, docs_pool.submit(process_document, path, digest, futures)))
        ocr_gate.decided()
        for path, pages, future in pending:
            try:
                rows = future.result()
            except InputError as exc:
                report.failures.append(str(exc))
                continue
            except Exception as exc:  # a model call failed: the document is not written
                if server_gone(exc):
                    gone = exc
                    break
                report.failures.append(f"{path}: failed on the models ({type(exc).__name__}: {exc}).")
                continue
            opening.result().replace_document(str(path), rows)
            report.ingested.append(str(path))
            report.pages += pages
            report.chunks += len(rows)
    finally:
        try:
            bar.close()
            if ocr_gate is not None:  # pages held for OCR must not keep the pools from shutting down
                ocr_gate.close()
            for pool in pools:
                pool.shutdown(wait=True, cancel_futures=True)
            for stage in stages.values():
                stage.shutdown()
        finally:  # the worker processes and the gRPC channel, whatever happened above
            rasteriser.close()
            models.close()
    report.seconds = time.monotonic() - started
    report.stages = {name: stage.times(started) for name, stage in stages.items()}
    report.ocr_groups = list(ocr_gate.groups) if ocr_gate else []
    report.ocr_released_by = list(ocr_gate.released_by) if ocr_gate else []
    try:  # a run that stored nothing keeps a current export as it is (rewriting it would change nothing)
        store = opening.result()  # open (its table exists), or its error is the one to report
        current = not report.ingested and exported_documents(out) is not None
        report.parquet = out / PARQUET if current else store.export_parquet()
    except Exception:  # with the server gone, that is the error to report; the store's is secondary
        if gone is None:
            raise
    if gone is not None:
        export = report.parquet.name if report.parquet else "no export: the store did not open"
        raise UserError(f"Triton at {grpc_url} stopped answering during the run ({gone}); the {len(report.ingested)} "
                        f"document(s) stored before it stay stored (and in {export}); bring the stack "
                        "back up and run ingest again: stored documents are skipped.")
    return report


def server_gone(exc: Exception) -> bool:
    """A call that failed because nothing answers at the address (gRPC UNAVAILABLE), not because of
    its input: the other documents would fail the same way."""
    status = getattr(exc, "status", None)
    return "UNAVAILABLE" in str(status() if callable(status) else status or "")


def search(query: str, out: Path, grpc_url: str, top_k: int = 5) -> list[dict]:
    """The `top_k` chunks nearest to the query's E5 embedding (input_type query), by cosine."""
    store = Store(out, create=False)
    models = Models(grpc_url)
    try:
        vector = models.embed([query], "query")[0]
    finally:
        models.close()
    return store.search(vector, top_k)
