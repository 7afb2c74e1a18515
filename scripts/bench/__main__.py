"""`python -m scripts.bench plot REPORT.json`: draw the plots of a report (e.g. one from a GPU box)."""
import json
import sys
from pathlib import Path

from scripts.bench.points import BenchPoint
from scripts.bench.report import plot

if len(sys.argv) != 3 or sys.argv[1] != "plot":
    sys.exit("usage: python -m scripts.bench plot REPORT.json")
data = json.loads(Path(sys.argv[2]).read_text())
for path in plot([BenchPoint(**p) for p in data["points"]], Path(sys.argv[2]).parent, data["meta"].get("device", "")):
    print(path)
