"""The raster workers (scripts/ingest/raster.py) hand pages over through files in a RAM-backed folder:
the same pages as rendering in the process, nothing left behind, and the pipe where the folder fails."""
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.ingest_pdf import mixed_pages, write_pdf
from scripts.ingest import raster
from scripts.ingest.raster import Rasteriser, make_spool
from scripts.ingest.sources import Document


@pytest.fixture(scope="module")
def pdf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("raster") / "mixed.pdf"
    write_pdf(path, mixed_pages(4))  # a scanned page among text, table and figure pages
    return path


def expected_pages(pdf: Path):
    doc = Document(pdf)
    try:
        return [doc.page(i).fit_for_elements() for i in range(len(doc))]
    finally:
        doc.close()


def assert_same_pages(got, want):
    for a, b in zip(got, want, strict=True):
        assert a.number == b.number and a.lines == b.lines
        assert a.pixels.dtype == np.uint8 and np.array_equal(a.pixels, b.pixels)
        assert (a.fitted is None) == (b.fitted is None)
        assert a.fitted is None or np.array_equal(a.fitted, b.fitted)


def handed_over(monkeypatch) -> list[str]:
    """How each page reached the parent: 'Spooled' (a file) or 'Page' (the pipe)."""
    kinds, received = [], raster._received
    monkeypatch.setattr(raster, "_received", lambda result: kinds.append(type(result).__name__) or received(result))
    return kinds


def test_pages_through_the_ram_folder_equal_pages_rendered_here_and_leave_no_file(pdf, tmp_path, monkeypatch):
    kinds = handed_over(monkeypatch)
    rasteriser = Rasteriser(2, ram_folder=tmp_path)
    try:
        spool = Path(rasteriser.spool.folder)
        assert spool.parent == tmp_path
        got = [rasteriser.page(pdf, i) for i in range(len(Document(pdf)))]
        assert os.listdir(spool) == [raster.LOCK_NAME]  # each page's file deleted once read
    finally:
        rasteriser.close()
    assert kinds == ["Spooled"] * len(got)
    assert_same_pages(got, expected_pages(pdf))
    assert list(tmp_path.iterdir()) == []


def test_closing_removes_pages_rendered_but_never_read(pdf, tmp_path):
    rasteriser = Rasteriser(1, ram_folder=tmp_path)
    try:
        unread = rasteriser.pool.submit(raster._render, pdf, 0, rasteriser.spool.folder).result()
        assert isinstance(unread, raster.Spooled) and Path(unread.file).is_file()
    finally:
        rasteriser.close()
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_sends_the_page_through_the_pipe(pdf, tmp_path, monkeypatch):
    kinds = handed_over(monkeypatch)
    rasteriser = Rasteriser(1, ram_folder=tmp_path)
    try:
        shutil.rmtree(rasteriser.spool.folder)  # the folder gone under the run: every write fails
        got = [rasteriser.page(pdf, i) for i in range(len(Document(pdf)))]
    finally:
        rasteriser.close()
    assert kinds == ["Page"] * len(got)
    assert_same_pages(got, expected_pages(pdf))


def test_no_spool_without_room_or_folder_and_spools_nobody_holds_are_removed(tmp_path, monkeypatch):
    assert make_spool(2, tmp_path / "missing") is None
    held = make_spool(2, tmp_path)  # a run going on (in a container, its process id means nothing here)
    killed = tmp_path / f"{raster.SPOOL_PREFIX}1-killed"  # its lock file, held by nobody
    killed.mkdir()
    (killed / raster.LOCK_NAME).touch()
    (killed / "page").write_bytes(b"pixels")
    starting, old = tmp_path / f"{raster.SPOOL_PREFIX}2-starting", tmp_path / f"{raster.SPOOL_PREFIX}3-old"
    for folder in (starting, old):  # no lock yet: a run between making its folder and its lock, or long gone
        folder.mkdir()
    os.utime(old, (time.time() - 120, time.time() - 120))
    spool = make_spool(2, tmp_path)
    try:
        assert spool is not None and held is not None
        assert {p.name for p in tmp_path.iterdir()} == {Path(held.folder).name, starting.name, Path(spool.folder).name}
        monkeypatch.setattr(raster, "PAGE_BYTES", 1 << 60)  # more than any folder holds
        assert make_spool(2, tmp_path) is None
    finally:
        held.remove()
        spool.remove()

