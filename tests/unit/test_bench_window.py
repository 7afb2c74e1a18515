"""The served point's window: Triton counts a request as it releases the response, which can follow
the client's receipt, so the window's snapshots wait until the requests sent are counted."""
from __future__ import annotations

from scripts.bench.load import server_means_ms, settled_totals


class LaggingStats:
    """Triton's statistics endpoint, counting one more success (of 10 ms) on each read up to `final`."""

    def __init__(self, start: int, final: int):
        self.count, self.final, self.reads = start, final, 0

    def get_inference_statistics(self, model, as_json, client_timeout):
        self.reads += 1
        self.count = min(self.count + 1, self.final) if self.reads > 1 else self.count
        ns = {"count": self.count, "ns": self.count * 10_000_000}
        return {"model_stats": [{"inference_stats": {"success": ns, "queue": {"ns": 0}, "compute_input": {"ns": 0},
                                                     "compute_infer": ns, "compute_output": {"ns": 0}}}]}


def test_the_snapshot_waits_until_the_requests_sent_are_counted():
    stats = LaggingStats(start=3, final=8)
    totals = settled_totals(stats, "m", requests=6)
    assert totals["requests"] == 6 and stats.reads == 4
    assert server_means_ms({"requests": 3, "success": 3e7, "queue": 0, "compute_input": 0, "compute_infer": 3e7,
                            "compute_output": 0}, totals)["server_ms"] == 10.0


def test_a_count_that_never_arrives_gives_up_after_the_timeout():
    stats = LaggingStats(start=3, final=4)
    totals = settled_totals(stats, "m", requests=6, timeout_s=0.05)
    assert totals["requests"] == 4 and stats.reads > 2
