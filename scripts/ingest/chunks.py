"""A page's lines -> chunks: page text chunks (box [0,0,1,1]) and one chunk per page element
(table, chart, title: the lines inside its box, a table's or chart's caption first).

Caption candidates, kept simple: the `CAPTION_CANDIDATES` lines nearest to the element's box that
are not inside it, by the gap between the two boxes (0 when they touch), nearest first;
caption_selection picks one or none."""
from __future__ import annotations

import re
from dataclasses import dataclass

from scripts.ingest.sources import Line
from triton_models.eclair.pages import parse_blocks

CHUNK_CHARS = 500
CAPTION_CANDIDATES = 5
WHOLE_PAGE = (0.0, 0.0, 1.0, 1.0)
_TAG = re.compile(r"<[^<>]{1,40}>")


@dataclass
class Chunk:
    page: int
    element: str  # text | table | chart | title
    box: tuple[float, float, float, float]
    text: str
    source: str = "text_layer"  # where the text came from: the PDF's text layer, or "ocr" (ECLAIR)


def ocr_lines(text: str, scale: float, page_hw: tuple[int, int]) -> list[Line]:
    """ECLAIR's output -> lines: its blocks with their boxes; without blocks, its text with the
    markup tags removed, one line per text line, on the whole page."""
    height, width = page_hw
    blocks = parse_blocks(text, scale, page_hw)
    if blocks:
        return [Line(b.text, (b.box[0] / width, b.box[1] / height, b.box[2] / width, b.box[3] / height))
                for b in blocks if b.text.strip()]
    plain = _TAG.sub(" ", text)
    return [Line(s.strip(), WHOLE_PAGE) for s in plain.splitlines() if s.strip()]


def split_text(lines: list[str], limit: int = CHUNK_CHARS) -> list[str]:
    """Lines joined into chunks of about `limit` characters, cut on line boundaries (a single line
    longer than the limit is cut on spaces, or hard where it has none)."""
    pieces = []
    for line in lines:
        line = line.strip()
        while len(line) > limit:
            cut = line.rfind(" ", 0, limit)
            cut = cut if cut > 0 else limit
            pieces.append(line[:cut].strip())
            line = line[cut:].strip()
        if line:
            pieces.append(line)
    chunks, current = [], ""
    for piece in pieces:
        if current and len(current) + 1 + len(piece) > limit:
            chunks.append(current)
            current = piece
        else:
            current = f"{current}\n{piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks


def _inside(line: Line, box) -> bool:
    cx, cy = (line.box[0] + line.box[2]) / 2, (line.box[1] + line.box[3]) / 2
    return box[0] <= cx <= box[2] and box[1] <= cy <= box[3]


def _gap(a, b) -> float:
    dx = max(b[0] - a[2], a[0] - b[2], 0.0)
    dy = max(b[1] - a[3], a[1] - b[3], 0.0)
    return (dx * dx + dy * dy) ** 0.5


def caption_candidates(lines: list[Line], box, count: int = CAPTION_CANDIDATES) -> list[str]:
    outside = [line for line in lines if line.box != WHOLE_PAGE and not _inside(line, box)]
    outside.sort(key=lambda line: _gap(line.box, box))
    return [line.text for line in outside[:count]]


def page_chunks(page: int, lines: list[Line], elements, captions: dict[int, str]) -> list[Chunk]:
    """`elements`: [(label, box, score)]; `captions`: element index -> caption. An element with
    neither text inside nor a caption gets no chunk (nothing to search)."""
    chunks = [Chunk(page, "text", WHOLE_PAGE, text) for text in split_text([line.text for line in lines])]
    for index, (label, box, _score) in enumerate(elements):
        inside = [line.text for line in lines if line.box != WHOLE_PAGE and _inside(line, box)]
        caption = captions.get(index, "")
        text = "\n".join(([caption] if caption else []) + inside).strip()
        if text:
            chunks.append(Chunk(page, label, tuple(box), text[: CHUNK_CHARS * 2]))
    return chunks
