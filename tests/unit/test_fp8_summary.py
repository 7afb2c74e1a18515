"""benchmarks.fp8_summary: the one table of fp8 beside fp16, read from a gpu_fp8.sh run's bench reports
(here the committed H200 run's) and the fp8 build's manifest."""
import json
import shutil

from benchmarks import fp8_summary
from tests.helpers import REPO_ROOT

RUN = REPO_ROOT / "docs/results/h200/fp8/2026-12-04-fp16-beside-fp8"


def _run_dir(tmp_path, precisions):
    out = tmp_path / "out"
    for precision in precisions:
        (out / f"deberta_large_{precision}").mkdir(parents=True)
        shutil.copy(RUN / f"bench_deberta_large_{precision}.json", out / f"deberta_large_{precision}/bench.json")
    return out


def test_table_puts_each_fp8_figure_beside_fp16s_with_the_gates_errors(tmp_path, capsys):
    manifest = tmp_path / "build/fp8/model_repository/deberta_large/manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"accuracy": {
        "fp8": [{"output": "output", "fp8_max_abs_error": 0.0334, "bound": 0.0396}],
        "kept_in_fp16": {"backbone.encoder.layer.*.output.dense": "alone in fp8: 0.115"}}}))
    fp8_summary.main(_run_dir(tmp_path, ("fp16", "fp8")), tmp_path / "build")
    printed = capsys.readouterr().out
    assert ("| deberta_large | 64 | input_ids [64, 128], input_mask [64, 128] | 3,499 | 3,598 | 1.03x | "
            "3,721 (raw graphs) | 3,842 (raw graphs) | 1.03x | 0.38 | 0.39 |") in printed
    assert "| deberta_large | 128 | input_ids [128, 128], input_mask [128, 128] | 3,266 | 3,374 | 1.03x |" in printed
    assert '- deberta_large: {"output": "output", "fp8_max_abs_error": 0.0334, "bound": 0.0396}' in printed
    assert "- deberta_large: kept in fp16: backbone.encoder.layer.*.output.dense (alone in fp8: 0.115)" in printed


def test_a_precision_with_no_report_leaves_its_cells_and_ratios_empty(tmp_path, capsys):
    out = _run_dir(tmp_path, ("fp16",))
    (out / "refused.txt").write_text("deberta_large_fp8: not served: the gate refused it\n")
    fp8_summary.main(out, tmp_path / "build")
    printed = capsys.readouterr().out
    assert "| 3,499 | - | - | 3,721 (raw graphs) | - | - | 0.38 | - |" in printed
    assert "deberta_large_fp8: not served: the gate refused it" in printed
