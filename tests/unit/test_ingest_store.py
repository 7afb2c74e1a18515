"""What is already stored, read from the store's Parquet export without LanceDB
(scripts/ingest/store.py `exported_documents`), and the export written whole."""
import os

import numpy as np

from scripts.ingest.store import DIM, PARQUET, Store, exported_documents


def _row(document, sha, chunk=0):
    return {"document": document, "sha256": sha, "page": 1, "chunk": chunk, "element": "text",
            "box": [0.0, 0.0, 1.0, 1.0], "text": f"chunk {chunk}", "embedding": np.ones(DIM, np.float32).tolist(),
            "fingerprint": "fp1", "source": "text_layer"}


def test_the_export_gives_what_is_stored_and_anything_unsure_defers_to_the_store(tmp_path):
    folder = tmp_path / "store"
    assert exported_documents(folder) == set()  # no table: nothing stored
    store = Store(folder)
    store.replace_document("a.pdf", [_row("a.pdf", "sha-a"), _row("a.pdf", "sha-a", 1)])
    store.replace_document("b.pdf", [_row("b.pdf", "sha-b")])
    assert exported_documents(folder) is None  # a table without an export: ask the store
    assert store.export_parquet() == folder / PARQUET
    assert (folder / PARQUET).is_file() and not list(folder.glob("*.partial"))  # no partial file left
    assert exported_documents(folder) == {("sha-a", "fp1"), ("sha-b", "fp1")} == store.ingested()
    store.replace_document("b.pdf", [_row("b.pdf", "sha-b2")])  # a run stopped before its export
    assert exported_documents(folder) is None  # the table is newer than the export: ask the store
    store.export_parquet()
    assert exported_documents(folder) == {("sha-a", "fp1"), ("sha-b2", "fp1")}
    newest = max(m.stat().st_mtime_ns for m in (folder / "chunks.lance" / "_versions").glob("*.manifest"))
    os.utime(folder / PARQUET, ns=(newest, newest))  # written in the same tick as the table's last change
    assert exported_documents(folder) is None  # a tie is not trusted
    store.export_parquet()

    (folder / PARQUET).write_bytes(b"PAR1 not a parquet file")  # an export cut short by hand
    assert exported_documents(folder) is None
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"sha256": ["sha-a"], "fingerprint": ["fp1"]}), folder / PARQUET)  # other columns
    assert exported_documents(folder) is None


def test_the_export_streams_every_row_in_batches_and_a_failed_one_keeps_the_last(tmp_path, monkeypatch):
    import pyarrow.parquet as pq
    import pytest

    from scripts.ingest import store as store_module

    monkeypatch.setattr(store_module, "EXPORT_ROWS", 2)  # 5 rows: batches of 2, 2 and 1
    store = Store(tmp_path)
    store.replace_document("a.pdf", [_row("a.pdf", "sha-a", chunk) for chunk in range(5)])
    store.export_parquet()
    exported = pq.read_table(tmp_path / PARQUET)
    assert sorted(exported.column("chunk").to_pylist()) == list(range(5))
    assert pq.ParquetFile(tmp_path / PARQUET).num_row_groups == 3  # written batch by batch
    assert exported.schema.equals(store_module.schema())
    store.replace_document("b.pdf", [_row("b.pdf", "sha-b")])

    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_batch", broken)
    with pytest.raises(OSError, match="No space left"):
        store.export_parquet()
    assert pq.read_table(tmp_path / PARQUET).num_rows == 5  # the last export, whole
    assert not list(tmp_path.glob("*.partial"))
