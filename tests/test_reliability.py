"""Results a user can trust: nothing reused across configurations, nonsense rejected before anything is written,
and every rejected input is one sentence with a non-zero exit (a property-based fuzz of the eval CLI)."""

import json
from dataclasses import fields

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qapruner.cli import build_parser, main
from qapruner.eval.config import EvalConfig
from qapruner.prune import PruneConfig

PRUNE_OPTIONS = {"prune": "host", "keep": "keep", "qa": "qa", "alpha": "alpha", "sensitivity": "sensitivity",
                 "layer_k": "layer_k", "relevance": "relevance"}
# where results go, argparse's own, and how the work is shared out (test_parallel: item for item identical)
NOT_A_PREDICTION = {"out", "func", "command", "help", "processes", "threads"}


def _eval_dests() -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {a.dest for a in sub.choices["eval"]._actions} - NOT_A_PREDICTION


def test_every_eval_option_is_part_of_the_resolved_config():
    """An option added to ``qapruner eval`` must reach EvalConfig (or PruneConfig), so that it is in the resume
    key; this fails when someone adds an option and forgets it."""
    config_fields = {f.name for f in fields(EvalConfig)}
    prune_fields = {f.name for f in fields(PruneConfig)}
    for dest in _eval_dests():
        assert dest in config_fields or (dest in PRUNE_OPTIONS and PRUNE_OPTIONS[dest] in prune_fields), dest


def test_resume_key_holds_every_field_but_the_declared_ones():
    cfg = EvalConfig(quant="w4a4-static", mode="generate", batch_size=8, calib_tasks=("easy-vqa", "shapes"),
                     prune=PruneConfig("cls", 0.25), calib_pruned=True, calib_seed=5, gemm="integer")
    assert set(cfg.key()) == {f.name for f in fields(EvalConfig)} - set(EvalConfig.NOT_IN_KEY)
    base = cfg.key()
    for change in ({"blank_image": True}, {"calib_samples": 8}, {"seed": 1}, {"limit": 5}, {"max_new_tokens": 3},
                   {"prune": PruneConfig("cls", 0.5, qa=True, alpha="dynamic")}, {"model": "testbed:x"},
                   {"batch_size": 3}, {"calib_tasks": ("shapes",)}, {"calib_pruned": False},
                   {"calib_seed": 6}):
        assert EvalConfig(**{**cfg.describe(), "quant": "w4a4-static", "prune": cfg.prune, **change}).key() != base, change
    # the default batch size (16), per-task and all-token calibration are left out: the keys of runs made before them
    plain = EvalConfig(quant="w4a4-static").key()
    assert "batch_size" not in plain and "calib_tasks" not in plain and "calib_pruned" not in plain
    # a calibration seed equal to the subset's seed is the run of before the option; FP calibrates nothing
    assert "calib_seed" not in plain and EvalConfig(quant="w4a4-static", calib_seed=0).key() == plain
    assert EvalConfig(calib_seed=3).key() == EvalConfig().key()
    assert EvalConfig(quant="w4a4-static", batch_size=3).key() != plain
    # options a run does not use do not split it: calibration size without a calibrating preset
    assert EvalConfig(calib_samples=4).key() == EvalConfig(calib_samples=8).key()
    assert (EvalConfig(prune=PruneConfig("cls", 0.5, alpha=0.3, qa=True)).key()
            != EvalConfig(prune=PruneConfig("cls", 0.5, alpha=0.4, qa=True)).key())


def _eval(tiny_llava_dir, tiny_jsonl, out, *extra):
    return main(["eval", "--model", str(tiny_llava_dir), "--task", f"jsonl:{tiny_jsonl}", "--out", str(out), *extra])


def test_blank_image_and_calibration_runs_never_reuse_other_items(tiny_llava_dir, tiny_jsonl, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert _eval(tiny_llava_dir, tiny_jsonl, out) == 0
    assert _eval(tiny_llava_dir, tiny_jsonl, out, "--blank-image") == 2
    assert "different configuration" in capsys.readouterr().err
    assert _eval(tiny_llava_dir, tiny_jsonl, tmp_path / "s.json", "--quant", "w4a8-static", "--calib-samples", "2") == 0
    assert _eval(tiny_llava_dir, tiny_jsonl, tmp_path / "s.json", "--quant", "w4a8-static",
                 "--calib-samples", "4") == 2
    assert "different configuration" in capsys.readouterr().err


def test_calib_seed_draws_another_calibration_sample_on_the_same_items(tiny_llava_dir, tiny_jsonl, tmp_path, capsys,
                                                                        monkeypatch):
    from qapruner.eval import prepare

    seeds, real = [], prepare.calibration_inputs
    monkeypatch.setattr(prepare, "calibration_inputs", lambda *a, **kw: seeds.append(a[3]) or real(*a, **kw))
    out = tmp_path / "s.json"
    assert _eval(tiny_llava_dir, tiny_jsonl, out, "--quant", "w4a8-static", "--calib-samples", "2") == 0
    assert _eval(tiny_llava_dir, tiny_jsonl, out, "--quant", "w4a8-static", "--calib-samples", "2",
                 "--calib-seed", "0") == 0  # = --seed: the same, finished run (nothing recomputed or requantized)
    assert _eval(tiny_llava_dir, tiny_jsonl, out, "--quant", "w4a8-static", "--calib-samples", "2",
                 "--calib-seed", "3") == 2
    assert "different configuration" in capsys.readouterr().err
    assert _eval(tiny_llava_dir, tiny_jsonl, tmp_path / "t.json", "--quant", "w4a8-static", "--calib-samples", "2",
                 "--calib-seed", "3") == 0
    assert seeds == [0, 3]
    first = json.loads(out.read_text())
    assert json.loads((tmp_path / "t.json").read_text())["n"] == first["n"]


def test_a_finished_run_is_summarized_again_without_quantizing(tiny_llava_dir, tiny_jsonl, tmp_path, monkeypatch):
    from qapruner import parallel

    calls, real = [], parallel.quantized_copy
    monkeypatch.setattr(parallel, "quantized_copy", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    out, items = tmp_path / "q.json", tmp_path / "q.items.jsonl"
    args = ("--quant", "w4a8-static", "--calib-samples", "2", "--limit", "6")
    assert _eval(tiny_llava_dir, tiny_jsonl, out, *args) == 0
    first = json.loads(out.read_text())
    assert calls == [1]
    assert _eval(tiny_llava_dir, tiny_jsonl, out, *args) == 0  # finished: no second quantization
    again = json.loads(out.read_text())
    assert calls == [1]
    assert again["correct"] == first["correct"] and again["quant_info"] == first["quant_info"]
    lines = items.read_text().splitlines()
    items.write_text("\n".join(lines[:-1]) + "\n")  # one item missing: it quantizes again and computes that one
    assert _eval(tiny_llava_dir, tiny_jsonl, out, *args) == 0
    assert calls == [1, 1] and items.read_text().splitlines() == lines
    out.unlink()  # the summary gone, the items complete: no quantization, and the record says so
    assert _eval(tiny_llava_dir, tiny_jsonl, out, *args) == 0
    assert calls == [1, 1] and "not quantized again" in json.loads(out.read_text())["quant_info"]["note"]


@pytest.mark.parametrize("extra,message", [
    (["--prune", "cls", "--keep", "1.5"], "Keep ratio must be a number in (0, 1]"),
    (["--quant", ""], "preset is empty"),
    (["--limit", "1000000000"], "exceeds the 12 items"),
    (["--prune", "fastv", "--keep", "0.5", "--layer-k", "99"], "--layer-k 99 is outside"),
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--quant", "w4a4", "--dtype", "bfloat16"], "runs FP and weight-only presets only"),
])
def test_nonsense_is_rejected_before_anything_is_written(tiny_llava_dir, tiny_jsonl, tmp_path, capsys, extra, message):
    out = tmp_path / "r.json"
    assert _eval(tiny_llava_dir, tiny_jsonl, out, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # no summary, no header-only items file


def test_out_under_a_regular_file_is_one_sentence(tiny_llava_dir, tiny_jsonl, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for argv in (["eval", "--out", str(tmp_path / "file" / "r.json")],
                 ["compare", "--limit", "2", "--out", str(tmp_path / "file" / "dir")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("qapruner: error: Cannot write") and err.count("\n") == 1


OPTION_VALUES = {
    "--task": st.sampled_from(["easy-vqa", "nope", "jsonl:", "jsonl:{jsonl}", "fashion-mnist:x"]),
    "--limit": st.integers(-5, 10**9).map(str),
    "--seed": st.integers(-3, 3).map(str),
    "--quant": st.sampled_from(["", "w4a4", "w4a4-rot-gptq", "w9", "fp", "w4a4-static", "w3a16-foo", " "]),
    "--prune": st.sampled_from(["cls", "fastv", "cdpruner", "random", "nope", ""]),
    "--keep": st.floats(allow_nan=True, allow_infinity=True).map(repr),
    "--alpha": st.sampled_from(["0.7", "dynamic", "-1", "2", "nan", "x"]),
    "--layer-k": st.integers(-3, 100).map(str),
    "--batch-size": st.integers(-2, 64).map(str),
    "--calib-samples": st.integers(-2, 64).map(str),
    "--mode": st.sampled_from(["choice", "generate"]),
}
FLAGS = ["--qa", "--blank-image"]
BROKEN_LINES = ['{"image": "missing.png", "question": "q", "answer": "a"}', "{not json", "[]", '""',
                '{"image": "img.png", "question": "q", "choices": ["a", "A"], "answer": "a"}',
                '{"image": "img.png", "question": "q", "choices": ["a", "b"], "answer": "c"}',
                '{"image": "img.png", "question": "q", "answer": "a", "scoring": "bogus"}', ""]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(options=st.dictionaries(st.sampled_from(sorted(OPTION_VALUES)), st.just(None), max_size=6).flatmap(
           lambda d: st.fixed_dictionaries({k: OPTION_VALUES[k] for k in d})),
       flags=st.lists(st.sampled_from(FLAGS), unique=True), lines=st.lists(st.sampled_from(BROKEN_LINES), max_size=3))
def test_cli_fuzz_rejects_in_one_sentence_and_writes_nothing(tmp_path_factory, capsys, options, flags, lines):
    """Random values for every option and random broken JSONL lines, against a model path that does not exist:
    every run must end in one sentence and a non-zero exit, with nothing written."""
    from PIL import Image

    root = tmp_path_factory.mktemp("fuzz")
    Image.new("RGB", (8, 8)).save(root / "img.png")
    good = json.dumps({"image": "img.png", "question": "q", "choices": ["a", "b"], "answer": "a"})
    (root / "t.jsonl").write_text("\n".join([good, *lines]) + "\n")
    argv = ["eval", "--model", str(root / "no-model"), "--out", str(root / "out" / "r.json")]
    for k, v in options.items():
        argv.append(f"{k}={v.replace('{jsonl}', str(root / 't.jsonl'))}")  # "=": values may start with "-"
    rc = main(argv + flags)
    err = capsys.readouterr().err
    assert rc == 2, (argv, err)
    assert err.startswith("qapruner: error: ") and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert not (root / "out").exists()
