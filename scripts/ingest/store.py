"""The chunk store: LanceDB, embedded (a folder, no server), table `chunks`, one row per chunk;
`export_parquet` writes the same rows to `chunks.parquet`. Milvus is the scale-out (not here)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from converters.errors import UserError

TABLE = "chunks"
PARQUET = "chunks.parquet"
EXPORT_ROWS = 4096  # rows per batch of the Parquet export (4096 x 384 floats: about 6 MB)
DIM = 384


def schema():
    import pyarrow as pa

    return pa.schema([
        ("document", pa.string()), ("sha256", pa.string()), ("page", pa.int32()), ("chunk", pa.int32()),
        ("element", pa.string()), ("box", pa.list_(pa.float32(), 4)), ("text", pa.string()),
        ("embedding", pa.list_(pa.float32(), DIM)), ("fingerprint", pa.string()),
        ("source", pa.string()),  # text_layer | ocr
    ])


def exported_documents(folder: Path) -> set[tuple[str, str]] | None:
    """(sha256, fingerprint) of the documents stored in `folder`, read without LanceDB (whose import
    takes about 2 s): none where there is no table; else those of the table's last Parquet export,
    each of which is in the table when no table version is newer than the export (the export is the
    table's rows at the end of a run), so skipping them is safe. None where the export is missing,
    unreadable, has other columns, or the table changed after it (a run stopped before its export):
    ask the store itself (`Store.ingested`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    if not (folder / f"{TABLE}.lance").exists():
        return set()
    try:
        manifests = (folder / f"{TABLE}.lance" / "_versions").glob("*.manifest")  # one per table version
        # a tie counts as newer: on a file system with coarse times, a change made in the same tick
        # as the export must not be trusted away
        if max((m.stat().st_mtime_ns for m in manifests), default=0) >= (folder / PARQUET).stat().st_mtime_ns:
            return None
        if pq.read_schema(folder / PARQUET).names != schema().names:
            return None
        columns = pq.read_table(folder / PARQUET, columns=["sha256", "fingerprint"]).to_pydict()
    except (OSError, pa.ArrowException):
        return None
    return set(zip(columns["sha256"], columns["fingerprint"]))


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def require_store(folder: Path) -> None:
    """One sentence when `folder` holds no chunk store (search needs one; checked before any server)."""
    if not (Path(folder) / f"{TABLE}.lance").exists():
        raise UserError(f"no chunk store in {folder}; run `python -m scripts.stack ingest PATH... --out {folder}` first.")


class Store:
    def __init__(self, folder: Path, create: bool = True):
        import lancedb

        self.folder = Path(folder)
        if not create:
            require_store(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.db = lancedb.connect(str(self.folder))
        if TABLE in self.db.list_tables().tables:
            self.table = self.db.open_table(TABLE)
            if set(self.table.schema.names) != set(schema().names):
                raise UserError(f"the chunk store in {self.folder} has other columns than this version writes "
                                f"({', '.join(self.table.schema.names)}); ingest into a new --out folder.")
        else:
            self.table = self.db.create_table(TABLE, schema=schema())

    def ingested(self) -> set[tuple[str, str]]:
        """(sha256, fingerprint) of every document already stored."""
        columns = self.table.search().select(["sha256", "fingerprint"]).limit(None).to_arrow().to_pydict()
        return set(zip(columns["sha256"], columns["fingerprint"]))

    def replace_document(self, document: str, rows: list[dict]) -> None:
        """A document's rows, all at once; its older rows (another sha256 or fingerprint) go."""
        import pyarrow as pa

        self.table.delete(f"document = {_quote(document)}")
        if rows:
            self.table.add(pa.Table.from_pylist(rows, schema=schema()))

    def count(self) -> int:
        return self.table.count_rows()

    def rows(self):
        return self.table.to_arrow()

    def export_parquet(self, path: Path | None = None) -> Path:
        """Every row to `path` (default chunks.parquet), streamed in batches of EXPORT_ROWS: a large
        store is never read into memory at once."""
        import pyarrow.parquet as pq

        path = path or self.folder / PARQUET
        # written beside it under a name of its own, then renamed: a stopped export never leaves half
        # a file, and two exports at once never write into one file
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        os.close(handle)
        partial = Path(name)
        try:
            batches = self.table.search().limit(None).to_batches(EXPORT_ROWS)
            with pq.ParquetWriter(partial, batches.schema) as writer:  # the table's own column order
                for batch in batches:
                    writer.write_batch(batch)
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return path

    def search(self, vector: np.ndarray, top_k: int) -> list[dict]:
        """The `top_k` nearest chunks by cosine distance, nearest first (`_distance` = 1 - cosine)."""
        if self.count() == 0:
            return []
        return (self.table.search(np.asarray(vector, np.float32)).distance_type("cosine").limit(top_k)
                .select(["document", "page", "element", "box", "text"]).to_list())
