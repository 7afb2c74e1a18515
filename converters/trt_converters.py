"""Script form of the conversion tool: `python converters/trt_converters.py FLAGS`.

Same as `python -m converters FLAGS`; kept for the original README's commands.
"""
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
    from converters.cli import main

    sys.exit(main())
