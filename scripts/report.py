"""The status table `up`, `status` and `verify` print."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from converters.model_folder import CONFIG_FILE, Manifest, read_model_config

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
        if (folder / CONFIG_FILE).is_file():
            config = read_model_config(folder)
            row.backend = config.platform or config.backend
            row.batch = str(config.max_batch_size)
            row.version = ",".join(sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.isdigit())) or "-"
        manifest = Manifest.read(folder)
        if manifest is not None:
            row.precision = manifest.precision
            row.checkpoint = "demo" if manifest.demo else "user"
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

