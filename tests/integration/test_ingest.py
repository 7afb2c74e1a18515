"""`stack ingest` and `stack search` (scripts/ingest/) against the served suite: every model built
from demo checkpoints and served by the real Triton on CPU (tests/integration/conftest.py).
E5's demo weights are real MiniLM weights, so search finds text; YOLOX, ECLAIR and the caption
model have random weights, so their elements and OCR text are checked for shape, not meaning."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


WORD = "zanzibarite"


def text_pdf(lines: list[str], width: int = 612, height: int = 792) -> bytes:
    """A one-page PDF with a real text layer (Helvetica), written by hand with a correct xref."""
    content = "\n".join(["BT /F1 14 Tf 16 TL 72 720 Td"] + [f"({line}) Tj T*" for line in lines] + ["ET"]).encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width} {height}] /Contents 4 0 R "
               f"/Resources << /Font << /F1 5 0 R >> >> >>".encode(),
               b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1) + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def _page_image():
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (600, 800), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((40, 40, 560, 80), fill=(30, 30, 200))
    draw.rectangle((60, 300, 540, 600), outline=(20, 20, 20), width=3)
    draw.text((70, 320), "Quarterly revenue by region", fill="black")
    return image


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    import pypdfium2 as pdfium

    folder = tmp_path_factory.mktemp("docs")
    (folder / "sub").mkdir()
    paths = {"text": folder / "report.pdf", "scan": folder / "scan.pdf", "png": folder / "sub" / "page.png",
             "not_pdf": folder / "notes.pdf", "corrupt": folder / "broken.pdf", "empty": folder / "empty.pdf"}
    paths["text"].write_bytes(text_pdf([f"The {WORD} mineral survey of the northern coast.",
                                        "Samples were taken at twelve sites along the shore.",
                                        "Revenue tables follow on the next page."]))
    _page_image().save(paths["scan"], "PDF")  # image only: no text layer -> OCR
    _page_image().save(paths["png"])
    paths["not_pdf"].write_text("this is a plain text file, not a PDF\n")
    paths["corrupt"].write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pa")
    empty = pdfium.PdfDocument.new()
    empty.save(str(paths["empty"]))
    empty.close()
    return paths


@pytest.fixture(scope="module")
def ingested(served_suite, inputs, tmp_path_factory):
    from scripts.ingest.commands import run_ingest
    from scripts.ingest.models import folders_in

    server, repo, _ = served_suite
    out = tmp_path_factory.mktemp("store")
    rc = run_ingest([inputs["text"].parent], out, server.grpc_url, folders_in(repo), progress=False)
    return out, rc


def _rows(out: Path) -> list[dict]:
    from scripts.ingest.store import Store

    return Store(out, create=False).rows().to_pylist()


def test_ingest_stores_the_good_documents_and_names_the_bad_ones(served_suite, inputs, ingested, capsys):
    out, rc = ingested
    assert rc == 1  # three bad inputs
    rows = _rows(out)
    by_doc = {}
    for row in rows:
        by_doc.setdefault(row["document"], []).append(row)
    assert set(by_doc) <= {str(inputs[k]) for k in ("text", "scan", "png")}
    text_rows = by_doc[str(inputs["text"])]
    assert any(WORD in r["text"] and r["element"] == "text" and r["box"] == [0, 0, 1, 1] for r in text_rows)
    for row in rows:
        assert row["page"] == 1
        assert row["element"] in ("text", "table", "chart", "title")
        assert len(row["box"]) == 4 and all(0 <= v <= 1 for v in row["box"])
        vector = np.asarray(row["embedding"], np.float32)
        assert vector.shape == (384,) and abs(np.linalg.norm(vector) - 1) < 1e-3
        assert len(row["sha256"]) == 64 and len(row["fingerprint"]) == 64
    assert Path(out, "chunks.parquet").is_file()
    import pyarrow.parquet as pq

    assert pq.read_table(out / "chunks.parquet").num_rows == len(rows)


def test_ingest_summary_and_second_run_skips(served_suite, inputs, ingested, caplog, capsys):
    from scripts.ingest.models import folders_in, stack_fingerprint
    from scripts.ingest.pipeline import ingest

    server, repo, _ = served_suite
    out, _ = ingested
    before = _rows(out)
    report = ingest([inputs["text"].parent], out, server.grpc_url, stack_fingerprint(folders_in(repo)), progress=False)
    text = "\n".join(report.lines())
    assert report.ingested == []
    # the image-only PDF and the PNG may yield no chunk from random OCR weights; the text PDF is stored
    assert str(inputs["text"]) in report.skipped
    for bad in ("not_pdf", "corrupt", "empty"):
        assert sum(str(inputs[bad]) in f for f in report.failures) == 1, report.failures
        assert str(inputs[bad]) in text
    assert "not a PDF" in text and "no pages" in text and "it is corrupt" in text
    assert "pages/s end to end" in text
    assert len(_rows(out)) == len(before)


def test_ocr_never_stores_image_pages_without_text(served_suite, inputs, tmp_path):
    from scripts.ingest.models import folders_in, stack_fingerprint
    from scripts.ingest.pipeline import ingest

    server, repo, _ = served_suite
    report = ingest([inputs["text"], inputs["png"]], tmp_path, server.grpc_url, stack_fingerprint(folders_in(repo)),
                    ocr="never", progress=False)
    assert report.failures == [] and len(report.ingested) == 2 and report.pages == 2
    assert report.stages["ocr"][0] == 0 and report.stages["elements"][0] == 2 and report.stages["embed"][0] >= 1


def test_search_ranks_the_chunk_with_the_word_first(served_suite, ingested, capsys):
    from scripts.ingest.commands import run_search
    from scripts.ingest.pipeline import search

    server, _, _ = served_suite
    out, _ = ingested
    hits = search(f"{WORD} mineral survey", out, server.grpc_url, top_k=3)
    assert hits and WORD in hits[0]["text"] and hits[0]["document"].endswith("report.pdf")
    assert run_search(f"{WORD} mineral", out, server.grpc_url, 2) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("1. ") and "report.pdf  page 1" in printed


def test_absurd_page_size_is_named(tmp_path):
    import pypdfium2 as pdfium

    from scripts.ingest.sources import Document, InputError

    pdf = pdfium.PdfDocument.new()
    pdf.new_page(30000, 600)
    path = tmp_path / "huge.pdf"
    pdf.save(str(path))
    pdf.close()
    doc = Document(path)
    with pytest.raises(InputError, match=r"huge\.pdf page 1 is 30000x600 points"):
        doc.page(0)
    doc.close()


@pytest.mark.parametrize("argv, message", [
    (["ingest"], "ingest needs at least one PDF"),
    (["search"], "search needs a query"),
    (["search", "a query", "--top-k", "0"], "--top-k must be at least 1"),
    (["ingest", "x.pdf", "--mode", "kubernetes"], "local and docker modes only"),
])
def test_cli_argument_errors_without_a_server(argv, message, capsys):
    from scripts.stack import main

    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_cli_refuses_extra_arguments_and_bad_ocr(capsys):
    from scripts.stack import main

    for argv in (["up", "a", "b"], ["ingest", "x.pdf", "--ocr", "sometimes"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
