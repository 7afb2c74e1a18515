"""The status table `up`, `status` and `verify` print."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from converters.triton_config import read_config

COLUMNS = ("model", "version", "backend", "precision", "batch", "ready", "verified", "load s", "checkpoint")

@dataclass
class ModelRow:
    model: str
    version: str = "-"
    backend: str = "-"
    precision: str = "-"
    batch: str = "-"
    ready: str = "no"
    verified: str = "-"
    load_s: str = "-"
    checkpoint: str = "-"

    @classmethod
    def from_folder(cls, folder: Path) -> "ModelRow":
        row = cls(folder.name)
        config_path, manifest_path = folder / "config.pbtxt", folder / "manifest.json"
        if config_path.is_file():
            config = read_config(config_path)
            row.backend = config.platform or config.backend
            row.batch = str(config.max_batch_size)
            row.version = ",".join(sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.isdigit())) or "-"
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            row.precision = manifest.get("precision", "-")
            row.checkpoint = "demo" if manifest.get("demo") else "user"
        return row

    def cells(self) -> tuple[str, ...]:
        return (self.model, self.version, self.backend, self.precision, self.batch, self.ready, self.verified,
                self.load_s, self.checkpoint)

def table(rows: list[ModelRow]) -> str:
    cells = [COLUMNS] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(COLUMNS))).rstrip() for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

