"""The chunk store of an ingest run, in a process of its own.

LanceDB's import takes about 2 s of Python. On a thread of the ingest process it held the GIL
while the first pages were being rendered and sent to the models, so every stage started late.
Here one worker process (spawned, as the raster workers are) imports it and opens the store
while the run starts, and does every write: a document's rows go to it as one Arrow IPC message.
One worker runs the calls in the order they were made. The ingest process needs only PyArrow.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from scripts.ingest.store import Store, schema

_store: Store | None = None  # the worker process's store, opened by its first call


def _open(folder: str) -> None:
    global _store
    _store = Store(Path(folder))


def _ingested() -> set[tuple[str, str]]:
    return _store.ingested()


def _replace(document: str, message: bytes) -> None:
    import pyarrow as pa

    _store.replace_document(document, pa.ipc.open_stream(message).read_all().to_pylist())


def _export() -> Path:
    return _store.export_parquet()


def _ipc(rows: list[dict]) -> bytes:
    import pyarrow as pa

    table = pa.Table.from_pylist(rows, schema=schema())
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


class StoreProcess:
    """Store's writing calls, run by one worker process; `opening` holds the store's open (its error,
    such as a store of other columns, is raised by the first call that needs the store)."""

    def __init__(self, folder: Path):
        self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        self.opening: Future = self.pool.submit(_open, str(folder))

    def _call(self, function, *args):
        self.opening.result()
        return self.pool.submit(function, *args).result()

    def ingested(self) -> set[tuple[str, str]]:
        return self._call(_ingested)

    def replace_document(self, document: str, rows: list[dict]) -> None:
        self._call(_replace, document, _ipc(rows))

    def export_parquet(self) -> Path:
        return self._call(_export)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
