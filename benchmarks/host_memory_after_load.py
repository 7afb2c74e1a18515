"""Host memory of a running local stack's Triton and every process below it (model stubs, any
compile workers), after load: `python3 -m benchmarks.host_memory_after_load STATE_DIR`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "converters" / "runners"))  # as published: beside model_support
from compiled_runner import process_tree  # noqa: E402

pid = int((Path(sys.argv[1]) / "triton.pid").read_text())
tree = process_tree(pid)
print(f"tritonserver (pid {pid}) and {len(tree) - 1} processes below it: {sum(tree.values()) / 2**20:,.0f} MB resident")
