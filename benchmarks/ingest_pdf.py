"""PDFs for the ingest tests and benchmark, written with fpdf2: text pages (a real text layer),
table pages, figure pages with a caption under the figure, and scanned pages (an image only, no
text layer), in any order; optionally encrypted.

    python -m benchmarks.ingest_pdf OUT.pdf --pages 120   # the benchmark's mixed document
"""
from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field
from pathlib import Path

WORDS = ("survey coast sample revenue region quarter method result table figure model engine page "
         "document process value growth market report summary analysis north south east west").split()


@dataclass
class PageSpec:
    kind: str  # text | table | figure | scan
    sentences: list[str] = field(default_factory=list)  # text pages: written first, one paragraph each
    caption: str = ""  # figure pages: the line under the figure


def page_image(width: int = 850, height: int = 1100, seed: int = 0, lines: int = 28):
    """A scanned-looking page: a title bar, text-like strokes and a boxed block, as pixels only."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((60, 50, width - 60, 100), fill=(30, 30, 160))
    for row in range(lines):
        y = 140 + row * 32
        x = 60
        while x < width - 120:
            word = rng.randint(30, 110)
            draw.rectangle((x, y, x + word, y + 12), fill=(40, 40, 40))
            x += word + rng.randint(12, 20)
    draw.rectangle((80, height - 260, width - 80, height - 80), outline=(20, 20, 20), width=3)
    draw.text((100, height - 240), " ".join(rng.choice(WORDS) for _ in range(8)), fill="black")
    return image


def filler(rng: random.Random, words: int = 60) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


# where page_image draws its title bar and its boxed block, as fractions of its width and height
SCAN_ELEMENTS = (("title", (60, 50, -60, 100)), ("table", (80, -260, -80, -80)))


def write_pdf(path: Path, pages: list[PageSpec], password: str | None = None, seed: int = 0,
              elements: list | None = None) -> Path:
    """`elements`, where given, gets one list a page of (label, (x0, y0, x1, y1) as fractions of
    the page): each table, figure (labelled chart) and scanned title bar and boxed block."""
    from fpdf import FPDF

    rng = random.Random(seed)
    pdf = FPDF(format="letter")
    pdf.set_auto_page_break(False)
    found = elements if elements is not None else []

    def box(label, x0, y0, x1, y1):
        found[-1].append((label, (x0 / pdf.w, y0 / pdf.h, x1 / pdf.w, y1 / pdf.h)))

    for number, spec in enumerate(pages, 1):
        pdf.add_page()
        found.append([])
        if spec.kind == "scan":
            pdf.image(page_image(seed=seed + number), x=0, y=0, w=pdf.w, h=pdf.h)
            for label, corners in SCAN_ELEMENTS:  # page_image is 850 x 1100, drawn over the whole page
                x0, y0, x1, y1 = (v % size for v, size in zip(corners, (850, 1100, 850, 1100)))
                box(label, x0 * pdf.w / 850, y0 * pdf.h / 1100, x1 * pdf.w / 850, y1 * pdf.h / 1100)
            continue
        pdf.set_font("helvetica", size=11)
        for sentence in spec.sentences:
            pdf.multi_cell(0, 6, sentence, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(3)
        if spec.kind == "table":
            rows = [["Region", "Q1", "Q2", "Q3", "Q4"]] + [
                [rng.choice(WORDS).title()] + [f"{rng.randint(10, 999)}.{rng.randint(0, 9)}" for _ in range(4)]
                for _ in range(12)]
            top = pdf.get_y()
            with pdf.table(col_widths=(40, 20, 20, 20, 20), text_align="CENTER") as table:
                for cells in rows:
                    row = table.row()
                    for cell in cells:
                        row.cell(cell)
            box("table", pdf.l_margin, top, pdf.l_margin + pdf.epw, pdf.get_y())
            pdf.ln(4)
            pdf.multi_cell(0, 6, "Table: " + filler(rng, 8), new_x="LMARGIN", new_y="NEXT")
        elif spec.kind == "figure":
            top = pdf.get_y()
            pdf.image(page_image(600, 400, seed=seed + number, lines=8), x=pdf.l_margin, w=pdf.epw * 0.8)
            box("chart", pdf.l_margin, top, pdf.l_margin + pdf.epw * 0.8, top + pdf.epw * 0.8 * 400 / 600)
            pdf.ln(2)
            pdf.multi_cell(0, 6, spec.caption or "Figure: " + filler(rng, 8), new_x="LMARGIN", new_y="NEXT")
        else:
            for _ in range(4):
                pdf.multi_cell(0, 6, filler(rng), new_x="LMARGIN", new_y="NEXT")
                pdf.ln(3)
    if password:
        pdf.set_encryption(owner_password=password + "-owner", user_password=password)
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(path))
    return path


def mixed_pages(count: int, scanned_every: int = 4, seed: int = 0) -> list[PageSpec]:
    """The benchmark's document: text, table and figure pages, every `scanned_every`-th page scanned."""
    rng = random.Random(seed)
    kinds = ("text", "table", "text", "figure")  # in turn over the pages that are not scanned
    scanned = [n % scanned_every == scanned_every - 1 for n in range(count)]
    return [PageSpec("scan") if scan else PageSpec(kinds[(n - sum(scanned[:n])) % len(kinds)], [filler(rng, 30)])
            for n, scan in enumerate(scanned)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest_pdf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--pages", type=int, default=120)
    parser.add_argument("--kind", choices=("mixed", "text", "scan"), default="mixed",
                        help="mixed (a quarter scanned), text-layer pages only, or scanned pages only")
    args = parser.parse_args()
    pages = {"mixed": mixed_pages(args.pages), "scan": [PageSpec("scan")] * args.pages,
             "text": [p for p in mixed_pages(args.pages * 2) if p.kind != "scan"][:args.pages]}[args.kind]
    print(write_pdf(args.out, pages))
