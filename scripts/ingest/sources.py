"""Inputs: PDF files, folders (recursively), PNG/JPEG pages; each page rasterised to fit the ECLAIR
page (1280x1024) with its text layer from PDFium where it has one.

PDFium is not thread-safe: every call into it holds `PDFIUM_LOCK` (rendering still overlaps the
model calls of other pages, which is what the pipeline needs)."""
from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from triton_models.eclair.pages import PAGE_HEIGHT, PAGE_WIDTH
from triton_models.yolox.page_processing import INPUT_SIZE, fit

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SUFFIXES = (".pdf",) + IMAGE_SUFFIXES
MAX_SIDE = 20000  # a page side over this (PDF points, or image pixels) is refused as absurd
PDFIUM_LOCK = threading.RLock()


class InputError(Exception):
    """One sentence naming the file (and page) and what is wrong with it."""


@dataclass
class Line:
    text: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 normalised to the page, top-left origin


@dataclass
class Page:
    number: int  # 1-based
    pixels: np.ndarray  # uint8 HxWx3, fitting 1280x1024
    lines: list[Line] = field(default_factory=list)  # the text layer (empty: none)
    # the page fitted into YOLOX's input (page_processing.fit), made on the raster workers so that
    # the served wrapper only pads it: see `elements_input`
    fitted: np.ndarray | None = None

    @property
    def elements_input(self) -> np.ndarray:
        """What the page-elements model is sent: the fitted page where made (its boxes, normalised,
        are the full page's), else the page."""
        return self.pixels if self.fitted is None else self.fitted

    def fit_for_elements(self) -> "Page":
        """Make `fitted` where it is smaller than the page (a small page is sent as it is: the server
        enlarges it, and the request stays small); returns the page."""
        self.fitted = fit(self.pixels)[0] if max(self.pixels.shape[:2]) > INPUT_SIZE else None
        return self

    @property
    def has_text_layer(self) -> bool:
        return any(line.text.strip() for line in self.lines)


def find_inputs(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Files to ingest, in order, without repeats; a path that does not exist is a failure."""
    found, failures, seen = [], [], set()
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        elif path.is_file():
            files = [path]
        else:
            failures.append(f"{path}: no such file or folder.")
            continue
        for file in files:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                found.append(file)
    return found, failures


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def kind_of(path: Path) -> str:
    """'pdf' or 'image' by the file's first bytes (not its name)."""
    with open(path, "rb") as f:
        head = f.read(1024)
    if b"%PDF-" in head:
        return "pdf"
    if head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff"):
        return "image"
    raise InputError(f"{path}: not a PDF, PNG or JPEG file.")


def _no_pages(path: Path) -> bool:
    """The page tree says /Count 0 and nowhere more (PDFium refuses such a file, and its error code
    may be a stale one from an earlier document)."""
    data = path.read_bytes()
    return re.search(rb"/Count\s*0(?![0-9])", data) is not None and re.search(rb"/Count\s*[1-9]", data) is None


def fit_scale(height: float, width: float) -> float:
    return min(PAGE_HEIGHT / height, PAGE_WIDTH / width)


class Document:
    """One input file, opened: `len(doc)` pages, `doc.page(i)` rasterises page i (0-based)."""

    def __init__(self, path: Path):
        self.path = path
        self.kind = kind_of(path)
        self._pdf = None
        if self.kind == "pdf":
            import pypdfium2 as pdfium

            with PDFIUM_LOCK:
                try:
                    self._pdf = pdfium.PdfDocument(str(path))
                except pdfium.PdfiumError as exc:
                    code = getattr(exc, "err_code", None)
                    if code == 0 or _no_pages(path):  # PDFium refuses a document without pages
                        raise InputError(f"{path}: the PDF has no pages.") from exc
                    if code == 4:  # FPDF_ERR_PASSWORD
                        raise InputError(f"{path}: the PDF is encrypted (it needs a password).") from exc
                    raise InputError(f"{path}: cannot open the PDF ({exc}); it is corrupt.") from exc
                self.pages = len(self._pdf)
            if self.pages == 0:
                self.close()
                raise InputError(f"{path}: the PDF has no pages.")
        else:
            self.pages = 1

    def __len__(self) -> int:
        return self.pages

    def page(self, index: int) -> Page:
        return self._pdf_page(index) if self.kind == "pdf" else self._image_page()

    def _image_page(self) -> Page:
        from PIL import Image

        try:
            with Image.open(self.path) as image:
                width, height = image.size
                if max(width, height) > MAX_SIDE or min(width, height) < 1:
                    raise InputError(f"{self.path}: page 1 is {width}x{height} pixels; pages larger than "
                                     f"{MAX_SIDE} pixels a side are refused.")
                image.draft("RGB", (PAGE_WIDTH, PAGE_HEIGHT))
                rgb = image.convert("RGB")
        except InputError:
            raise
        except Exception as exc:  # PIL's errors on truncated or bogus images, decompression bombs
            raise InputError(f"{self.path}: page 1 cannot be decoded as an image ({exc}).") from exc
        scale = fit_scale(rgb.height, rgb.width)
        if scale < 1:
            rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.BICUBIC)
        return Page(1, np.asarray(rgb, dtype=np.uint8))

    def _pdf_page(self, index: int) -> Page:
        name = f"{self.path} page {index + 1}"
        with PDFIUM_LOCK:
            try:
                page = self._pdf[index]
                width, height = page.get_size()
                if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
                    raise InputError(f"{name} is {width:.0f}x{height:.0f} points; pages larger than {MAX_SIDE} "
                                     "points a side (or empty) are refused.")
                # RGB from PDFium itself (rev_byteorder): the same pixels as converting its BGR, in half the time
                bitmap = page.render(scale=fit_scale(height, width), rev_byteorder=True)
                pixels = (np.array(bitmap.to_numpy(), dtype=np.uint8) if bitmap.mode == "RGB"
                          else np.array(bitmap.to_pil().convert("RGB"), dtype=np.uint8))
                lines = _text_lines(page, width, height)
            except InputError:
                raise
            except Exception as exc:
                raise InputError(f"{name} cannot be read ({exc}).") from exc
        return Page(index + 1, pixels, lines)

    def close(self) -> None:
        if self._pdf is not None:
            with PDFIUM_LOCK:
                self._pdf.close()
            self._pdf = None


def _text_lines(page, width: float, height: float) -> list[Line]:
    """The text layer as PDFium's text rectangles (about one per line run), boxes normalised."""
    textpage = page.get_textpage()
    try:
        if not textpage.get_text_range().strip():
            return []
        lines = []
        for i in range(textpage.count_rects()):
            left, bottom, right, top = textpage.get_rect(i)
            text = textpage.get_text_bounded(left, bottom, right, top).strip()
            if text:
                box = (left / width, (height - top) / height, right / width, (height - bottom) / height)
                lines.append(Line(text, tuple(min(max(v, 0.0), 1.0) for v in box)))
        return lines
    finally:
        textpage.close()
