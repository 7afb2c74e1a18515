"""`stack ingest` and `stack search` (scripts/ingest/) against the served suite: every model built
from demo checkpoints and served by the real Triton on CPU (tests/integration/conftest.py).
E5's demo weights are real MiniLM weights, so search finds text; YOLOX, ECLAIR and the caption
model have random weights, so their elements and OCR text are checked for shape, not meaning."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest


WORD = "zanzibarite"
SENTENCES = ["The lighthouse keeper logged every passing ship in a leather book.",  # page 1
             "Quarterly revenue by region rose in the south and fell in the north.",  # page 2, over a table
             f"The {WORD} mineral survey of the northern coast found twelve deposits.",  # page 3
             "Falcons nest on the cliffs above the harbour every spring."]  # page 4, over a figure
CAPTION = "Figure 1: nesting sites counted along the cliffs."


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Made with fpdf2: a five-page report (text, table, text, figure with its caption, and an
    image-only scanned page), a PNG page, and four bad inputs."""
    import pypdfium2 as pdfium

    from benchmarks.ingest_pdf import PageSpec, page_image, write_pdf

    folder = tmp_path_factory.mktemp("docs")
    (folder / "sub").mkdir()
    paths = {"text": folder / "report.pdf", "png": folder / "sub" / "page.png", "not_pdf": folder / "notes.pdf",
             "corrupt": folder / "broken.pdf", "empty": folder / "empty.pdf", "encrypted": folder / "locked.pdf"}
    write_pdf(paths["text"], [PageSpec("text", [SENTENCES[0]]), PageSpec("table", [SENTENCES[1]]),
                              PageSpec("text", [SENTENCES[2]]), PageSpec("figure", [SENTENCES[3]], CAPTION),
                              PageSpec("scan")])
    write_pdf(paths["encrypted"], [PageSpec("text", ["A page behind a password."])], password="s3cret")
    page_image().save(paths["png"])
    paths["not_pdf"].write_text("this is a plain text file, not a PDF\n")
    paths["corrupt"].write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pa")
    empty = pdfium.PdfDocument.new()
    empty.save(str(paths["empty"]))
    empty.close()
    return paths


@pytest.fixture(scope="module")
def ingested(served_suite, inputs, tmp_path_factory):
    from scripts.ingest.commands import run_ingest
    from scripts.ingest.models import folders_in, stack_fingerprint

    server, repo, _ = served_suite
    out = tmp_path_factory.mktemp("store")
    printed = io.StringIO()  # what the command printed, for the test that reads its summary
    with contextlib.redirect_stdout(printed):
        rc = run_ingest([inputs["text"].parent], out, server.grpc_url, stack_fingerprint(folders_in(repo)), progress=False)
    return out, rc, printed.getvalue()


def _rows(out: Path) -> list[dict]:
    from scripts.ingest.store import Store

    return Store(out, create=False).rows().to_pylist()


def test_ingest_stores_the_good_documents_and_names_the_bad_ones(served_suite, inputs, ingested):
    out, rc, printed = ingested
    assert rc == 1  # four bad inputs, each named with its reason
    for bad, reason in (("not_pdf", "not a PDF"), ("corrupt", "it is corrupt"), ("empty", "no pages"),
                        ("encrypted", "the PDF is encrypted")):
        assert any(str(inputs[bad]) in line and reason in line for line in printed.splitlines()), (bad, printed)
    rows = _rows(out)
    by_doc = {}
    for row in rows:
        by_doc.setdefault(row["document"], []).append(row)
    assert set(by_doc) <= {str(inputs[k]) for k in ("text", "png")}
    report = by_doc[str(inputs["text"])]
    for number, sentence in enumerate(SENTENCES, 1):  # each page's text layer, on its own page
        assert any(sentence in r["text"] and r["page"] == number and r["element"] == "text"
                   and r["box"] == [0, 0, 1, 1] and r["source"] == "text_layer" for r in report), number
    assert any(CAPTION in r["text"] and r["page"] == 4 for r in report)
    scanned = [r for r in report if r["page"] == 5]  # image only: its text is ECLAIR's
    assert scanned and all(r["source"] == "ocr" for r in scanned)
    assert all(r["source"] == "text_layer" for r in report if r["page"] < 5)
    ordered = sorted(report, key=lambda r: r["chunk"])  # chunks numbered in page order, whatever order pages end in
    assert [r["chunk"] for r in ordered] == list(range(len(report)))
    assert [r["page"] for r in ordered] == sorted(r["page"] for r in report)
    for row in rows:
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
    out, _, _ = ingested
    before = _rows(out)
    exported = (out / "chunks.parquet").stat().st_mtime_ns
    report = ingest([inputs["text"].parent], out, server.grpc_url, stack_fingerprint(folders_in(repo)), progress=False)
    text = "\n".join(report.lines())
    assert report.ingested == []
    assert str(inputs["text"]) in report.skipped  # (the PNG may yield no chunk from random OCR weights)
    for bad in ("not_pdf", "corrupt", "empty", "encrypted"):
        assert sum(str(inputs[bad]) in f for f in report.failures) == 1, report.failures
        assert str(inputs[bad]) in text
    assert "not a PDF" in text and "no pages" in text and "it is corrupt" in text
    assert f"{inputs['encrypted']}: the PDF is encrypted (it needs a password)." in text
    assert "pages/s end to end" in text
    assert len(_rows(out)) == len(before)
    # nothing stored: the current export is kept as it is, not written again
    assert report.parquet == out / "chunks.parquet" and (out / "chunks.parquet").stat().st_mtime_ns == exported


def test_ocr_never_stores_image_pages_without_text(served_suite, inputs, tmp_path):
    from scripts.ingest.models import folders_in, stack_fingerprint
    from scripts.ingest.pipeline import ingest

    server, repo, _ = served_suite
    report = ingest([inputs["text"], inputs["png"]], tmp_path, server.grpc_url, stack_fingerprint(folders_in(repo)),
                    ocr="never", progress=False)
    assert report.failures == [] and len(report.ingested) == 2 and report.pages == 6
    assert report.stages["ocr"].items == 0 and report.stages["elements"].items == 6 and report.stages["embed"].items >= 1
    steps = report.start_up  # when each step of the start ended, in the order they run
    order = ["raster workers started", "models connected", "stages set up", "first pages sent"]
    assert [steps[step] for step in order] == sorted(steps[step] for step in order) and "store open" in steps
    assert steps["first pages sent"] <= report.stages["raster"].first_s + 0.05 and any(
        line.startswith("  start-up: raster workers started at") for line in report.lines())
    elements = report.stages["elements"]  # its calls within the run, busy at most from its first to its last
    assert 0 <= elements.first_s < elements.last_s <= report.seconds
    assert 0 < elements.busy_s <= elements.last_s - elements.first_s + 1e-6
    assert f"busy {elements.busy_s:6.1f} s (from {elements.first_s:.1f} to {elements.last_s:.1f} s)" in "\n".join(report.lines())
    assert report.ocr_groups == []


def test_pages_bound_for_ocr_go_together_and_do_not_wait_the_hold_at_the_end(served_suite, inputs, tmp_path):
    """--ocr always: every page is held for ECLAIR; once no page is left that could join them, they
    go at once, so this run ends long before its 120 s hold."""
    from scripts.ingest.models import OCR, Models, folders_in, stack_fingerprint
    from scripts.ingest.pipeline import ingest

    server, repo, _ = served_suite
    models = Models(server.grpc_url)
    slots = models.max_batch(OCR)
    models.close()
    assert slots > 1  # else each page is a group of its own, whatever the gate does
    report = ingest([inputs["text"], inputs["png"]], tmp_path, server.grpc_url, stack_fingerprint(folders_in(repo)),
                    ocr="always", progress=False, ocr_hold_s=120)
    assert report.failures == [] and report.pages == 6 and report.stages["ocr"].items == 6
    assert sum(report.ocr_groups) == 6 and max(report.ocr_groups) <= slots and len(report.ocr_groups) < 6
    assert "held" not in report.ocr_released_by, report.ocr_released_by  # no group waited out the 120 s
    assert report.ocr_released_by[-1] == "no page left"  # the last group went when no page could join it
    assert f"OCR pages went in {len(report.ocr_groups)} group(s)" in "\n".join(report.lines())


def test_search_ranks_the_chunk_of_page_3_first(served_suite, ingested, capsys):
    from scripts.ingest.commands import run_search
    from scripts.ingest.pipeline import search

    server, _, _ = served_suite
    out, _, _ = ingested
    hits = search(SENTENCES[2], out, server.grpc_url, top_k=3)
    assert hits and SENTENCES[2] in hits[0]["text"] and hits[0]["page"] == 3
    assert hits[0]["document"].endswith("report.pdf")
    assert run_search(f"{WORD} mineral", out, server.grpc_url, 2) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("1. ") and "report.pdf  page 3" in printed


def test_a_server_gone_mid_run_stops_it_and_keeps_what_was_stored(served_suite, tmp_path, monkeypatch):
    """The server stops answering (gRPC UNAVAILABLE, as tritonclient raises it) while the second
    document is embedded: the run stops with one sentence, the first document stays stored."""
    from tritonclient.utils import InferenceServerException

    from benchmarks.ingest_pdf import PageSpec, write_pdf
    from converters.errors import UserError
    from scripts.ingest.models import Models, folders_in, stack_fingerprint
    from scripts.ingest.pipeline import ingest

    server, repo, _ = served_suite
    first = write_pdf(tmp_path / "a_first.pdf", [PageSpec("text", ["Otters hold hands while they sleep."])])
    second = write_pdf(tmp_path / "b_second.pdf", [PageSpec("text", ["The bridge closes for repairs at night."])])
    embed = Models.embed

    def embed_or_gone(self, texts, input_type="passage"):
        if any("bridge" in text for text in texts):
            raise InferenceServerException("failed to connect to all addresses", status="StatusCode.UNAVAILABLE")
        return embed(self, texts, input_type)

    monkeypatch.setattr(Models, "embed", embed_or_gone)
    with pytest.raises(UserError, match=r"stopped answering during the run .* the 1 document\(s\) stored before it "
                                        r"stay stored"):
        ingest([first, second], tmp_path / "store", server.grpc_url, stack_fingerprint(folders_in(repo)), progress=False)
    assert {row["document"] for row in _rows(tmp_path / "store")} == {str(first)}


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
    (["ingest", "x.pdf", "--ocr-hold", "-1"], "--ocr-hold must be 0 to 600 seconds, got -1.0"),
    (["ingest", "x.pdf", "--ocr-hold", "inf"], "--ocr-hold must be 0 to 600 seconds, got inf"),
    (["ingest", "x.pdf", "y"], "nothing to ingest: x.pdf, y do not exist."),
    (["search", "a query", "--out", "nowhere"], "no chunk store in nowhere; run `python -m scripts.stack ingest"),
])
def test_cli_argument_errors_without_a_server(argv, message, capsys, tmp_path, monkeypatch):
    from scripts.stack import main

    monkeypatch.chdir(tmp_path)  # the relative paths above name nothing
    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_cli_refuses_extra_arguments_and_bad_ocr(capsys):
    from scripts.stack import main

    for argv, says in ((["up", "a", "b"], "error: up takes at most one argument; got a b"),
                       (["ingest", "x.pdf", "--ocr", "sometimes"], "error: argument --ocr: invalid choice: 'sometimes'")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 1  # one line, as every user error
        err = capsys.readouterr().err
        assert err.startswith(says) and err.count("\n") == 1, err
