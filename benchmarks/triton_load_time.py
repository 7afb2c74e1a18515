"""Triton's own load time from its log: from the server's first line to the last model's
"successfully loaded". `python -m benchmarks.triton_load_time triton.log` prints seconds."""
import re
import sys
from datetime import datetime

STAMP = re.compile(r"^[IWE](\d{4}) (\d\d:\d\d:\d\d\.\d+) ")


def load_seconds(lines) -> float:
    first = last = None
    for line in lines:
        found = STAMP.match(line)
        if not found:
            continue
        at = datetime.strptime(found.group(2), "%H:%M:%S.%f")
        first = first or at
        if "successfully loaded" in line:
            last = at
    if first is None or last is None:
        raise SystemExit("no model was loaded in this log")
    return (last - first).total_seconds()


if __name__ == "__main__":
    with open(sys.argv[1], errors="replace") as handle:
        print(f"{load_seconds(handle):.1f}")
