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


def test_the_store_process_writes_in_its_own_process_and_names_a_store_it_cannot_open(tmp_path):
    """scripts/ingest/store_process.py: the rows an ingest run stores go through a worker process,
    so the ingest process never imports LanceDB; what it stored is what Store reads back; a store
    of other columns is refused with Store's own sentence."""
    import subprocess
    import sys

    import pytest

    from converters.errors import UserError
    from scripts.ingest.store_process import StoreProcess
    from tests.helpers import REPO_ROOT

    script = f"""
import sys
import numpy as np
from pathlib import Path
from scripts.ingest.store_process import StoreProcess
def rows(document, count):
    return [dict(document=document, sha256="sha-" + document[0], page=1, chunk=c, element="text",
                 box=[0.0, 0.0, 1.0, 1.0], text=f"chunk {{c}}", embedding=np.full({DIM}, c, np.float32).tolist(),
                 fingerprint="fp1", source="ocr") for c in range(count)]
store = StoreProcess(Path({str(tmp_path / "store")!r}))
store.replace_document("a.pdf", rows("a.pdf", 3))
store.replace_document("b.pdf", rows("b.pdf", 1))
print(sorted(store.ingested()), store.export_parquet().name, "lancedb" in sys.modules)
store.close()
"""
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["[('sha-a',", "'fp1'),", "('sha-b',", "'fp1')]", PARQUET, "False"]
    stored = Store(tmp_path / "store").rows().to_pylist()
    assert sorted((r["document"], r["chunk"]) for r in stored) == [("a.pdf", 0), ("a.pdf", 1), ("a.pdf", 2),
                                                                    ("b.pdf", 0)]
    assert [r["embedding"][0] for r in sorted(stored, key=lambda r: (r["document"], r["chunk"]))] == [0, 1, 2, 0]

    import lancedb
    import pyarrow as pa

    lancedb.connect(str(tmp_path / "other")).create_table("chunks", pa.table({"text": ["x"]}))
    store = StoreProcess(tmp_path / "other")
    try:
        with pytest.raises(UserError, match="has other columns than this version writes"):
            store.ingested()
    finally:
        store.close()
