"""``qapruner compare`` end to end with the real backend (adapter, quantization, pruning, gallery) on a tiny
random LLaVA built in the test."""

import json

from qapruner.cli import main


def test_compare_runs_the_real_backend_on_a_tiny_llava(tiny_llava_dir, tiny_jsonl, tmp_path):
    out = tmp_path / "cmp"
    argv = ["compare", "--model", str(tiny_llava_dir), "--tasks", f"jsonl:{tiny_jsonl}", "--quant", "w4a8",
            "--hosts", "cls,fastv,cdpruner", "--keeps", "0.5", "--gallery", "2", "--bootstrap-reps", "200",
            "--layer-k", "1", "--out", str(out)]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    # without --config the demo's grid (no FP + host rows): FP dense, FP blank, W dense, W + host / QA-host
    assert len(res["configs"]) == 1 + 1 + 1 + 6
    blind = next(c for c in res["configs"] if c["kind"] == "fp-blank")
    assert res["image_dependence"][f"jsonl:{tiny_jsonl}"]["blind_id"] == blind["id"]
    assert all(c["n"] == 12 for c in res["configs"]) and len(res["comparisons"]) == 3
    assert (out / "items.tar.xz").exists() and (out / "report.md").exists() and (out / "gallery.png").exists()
    # a rerun reuses every finished configuration
    assert main(argv) == 0
    assert json.loads((out / "results.json").read_text())["wall"]["configs_computed"] == 0
