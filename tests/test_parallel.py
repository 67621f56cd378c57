"""Data-parallel eval / compare (docs/parallel.md): 2 CPU processes launched through accelerate
(``--processes 2``) against 1 process, both with 1 torch thread per process, on a tiny LLaVA built here.

Beyond equal items files, every process records each batch it runs (a digest of each item's features) and
the exact bytes of each item's logits. The model path is not bitwise independent of which items share a batch
(padding changes the matmul shapes: ~1e-7 differences, measured), so a sharding that regrouped items would
show here even where no prediction flips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from qapruner.cli import main
from qapruner.models.llava import LlavaAdapter

# Installed in each worker as ``sitecustomize`` (workers have RANK set) and in this process by ``_trace``.
TRACE = textwrap.dedent('''
    import hashlib, json, os

    def install():
        import torch
        from qapruner.models.llava import LlavaAdapter

        original = LlavaAdapter.forward

        def forward(self, feats, *args, **kwargs):
            out = original(self, feats, *args, **kwargs)
            digest = lambda t: hashlib.sha1(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]
            record = {"items": [digest(f) for f in feats], "logits": [digest(x) for x in out.logits],
                      "threads": torch.get_num_threads()}
            path = os.path.join(os.environ["QAPRUNER_TRACE"], "rank%s.jsonl" % os.environ.get("RANK", "0"))
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\\n")
            return out

        LlavaAdapter.forward = forward

    if os.environ.get("QAPRUNER_TRACE") and "RANK" in os.environ:
        install()
''')


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_jsonl):
    from tiny_checkpoint import build_tiny_llava

    root = tmp_path_factory.mktemp("parallel")
    (root / "site").mkdir()
    (root / "site" / "sitecustomize.py").write_text(TRACE)
    model = build_tiny_llava(root / "llava", seed=5)  # seed 5: answers vary across items under W4A8 (seed 0: all D)
    return {"root": root, "model": str(model), "task": f"jsonl:{tiny_jsonl}"}


def _eval_args(s) -> list[str]:
    return ["eval", "--model", s["model"], "--task", s["task"], "--quant", "w4a8-gptq", "--calib-samples", "8",
            "--prune", "cdpruner", "--keep", "0.5", "--qa", "--batch-size", "5", "--threads", "1"]


def _one_process(argv, trace: Path) -> None:
    """``qapruner ARGV`` in this process, traced, restoring the thread count and ``LlavaAdapter.forward``."""
    threads = torch.get_num_threads()
    mp = pytest.MonkeyPatch()
    try:
        trace.mkdir(parents=True, exist_ok=True)
        mp.setenv("QAPRUNER_TRACE", str(trace))
        mp.setattr(LlavaAdapter, "forward", LlavaAdapter.forward)
        mp.setattr("qapruner.models.registry.default_device", lambda: torch.device("cpu"))  # as the CPU workers
        namespace: dict = {}
        exec(TRACE, namespace)
        namespace["install"]()
        assert main(argv) == 0
    finally:
        mp.undo()
        torch.set_num_threads(threads)


def _two_processes(s, argv, trace: Path, cache: Path) -> subprocess.CompletedProcess:
    trace.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, QAPRUNER_TRACE=str(trace), QAPRUNER_CACHE=str(cache), CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([str(s["root"] / "site"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "qapruner", *argv, "--processes", "2"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _records(trace: Path) -> dict[str, list[dict]]:
    return {p.stem: [json.loads(line) for line in p.read_text().splitlines()] for p in sorted(trace.glob("rank*"))}


def _logits(records: list[dict]) -> dict[str, str]:
    return {item: logit for r in records for item, logit in zip(r["items"], r["logits"])}


def _rows(path: Path) -> dict[str, tuple]:
    rows = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    assert len(rows) == len({r["uid"] for r in rows})
    return {r["uid"]: (r["pred"], r["kept"], r["correct"]) for r in rows}


@pytest.fixture(scope="module")
def reference(setup):
    """The single-process eval (own feature cache), run once for the tests below."""
    out = setup["root"] / "one" / "r.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QAPRUNER_CACHE", str(setup["root"] / "cache-one"))
        _one_process([*_eval_args(setup), "--out", str(out)], setup["root"] / "trace-one")
    return out


def test_eval_on_two_processes_reproduces_one_process(setup, reference):
    out = setup["root"] / "two" / "r.json"
    _two_processes(setup, [*_eval_args(setup), "--out", str(out)], setup["root"] / "trace-two",
                   setup["root"] / "cache-two")  # a fresh cache: the main process encodes the features
    one_items, two_items = reference.with_suffix(".items.jsonl"), out.with_suffix(".items.jsonl")
    assert two_items.read_bytes() == one_items.read_bytes()  # same rows, same order, same header
    assert not list(out.parent.glob("*.shard-*"))
    rows = _rows(one_items)
    assert len(rows) == 12 and len({p for p, _, _ in rows.values()}) > 1 and all(len(k) == 8 for _, k, _ in rows.values())
    one, two = json.loads(reference.read_text()), json.loads(out.read_text())
    assert set(one) == set(two) and two["timing"]["processes"] == 2 and two["timing"]["items_timed"] == 12
    for key in ("n", "correct", "accuracy", "ci95", "visual_tokens", "prune", "config"):
        assert one[key] == two[key], key
    # both processes worked, on exactly the single-process batches, with bitwise-equal logits, 1 thread each
    ref, par = _records(setup["root"] / "trace-one")["rank0"], _records(setup["root"] / "trace-two")
    assert set(par) == {"rank0", "rank1"} and all(par.values())
    assert _logits([r for rs in par.values() for r in rs]) == _logits(ref)
    assert sorted(r["items"] for rs in par.values() for r in rs) == sorted(r["items"] for r in ref)
    assert {r["threads"] for rs in [ref, *par.values()] for r in rs} == {1}


def _pairs(records: list[dict]) -> set[tuple[str, str]]:
    return {(item, logit) for r in records for item, logit in zip(r["items"], r["logits"])}


def test_compare_on_two_processes_resumes_and_reproduces_one_process(setup):
    """A 1-process compare killed in its third configuration (the fourth has a stale shard of a 3-process
    run) is finished by 2 processes: every items file equals the uninterrupted 1-process run's."""
    args = ["compare", "--model", setup["model"], "--tasks", setup["task"], "--quant", "w4a8-gptq",
            "--calib-samples", "8", "--hosts", "fastv", "--keeps", "0.5", "--layer-k", "1", "--no-fp-pruned",
            "--no-blank", "--gallery", "1", "--bootstrap-reps", "20", "--batch-size", "5", "--threads", "1"]
    one, two = setup["root"] / "cmp-one", setup["root"] / "cmp-two"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QAPRUNER_CACHE", str(setup["root"] / "cache-one"))
        _one_process([*args, "--out", str(one)], setup["root"] / "trace-cmp-one")
    files = {k: next((one / "items").glob(f"*__{k}__*.jsonl")).name
             for k in ("fp__dense", "w4a8-gptq__dense", "w4a8-gptq__fastv-k0.5", "w4a8-gptq__fastv-qa-k0.5")}
    (two / "items").mkdir(parents=True)
    for k in ("fp__dense", "w4a8-gptq__dense"):  # finished: reused
        for suffix in (".jsonl", ".summary.json"):
            name = files[k].replace(".jsonl", suffix)
            (two / "items" / name).write_bytes((one / "items" / name).read_bytes())
    lines = (one / "items" / files["w4a8-gptq__fastv-k0.5"]).read_text().splitlines(keepends=True)
    (two / "items" / files["w4a8-gptq__fastv-k0.5"]).write_text("".join(lines[:6]) + lines[6][:9])  # killed
    lines = (one / "items" / files["w4a8-gptq__fastv-qa-k0.5"]).read_text().splitlines(keepends=True)
    (two / "items" / (files["w4a8-gptq__fastv-qa-k0.5"] + ".shard-2")).write_text("".join(lines[:6]))
    _two_processes(setup, [*args, "--out", str(two)], setup["root"] / "trace-cmp-two", setup["root"] / "cache-cmp")
    for name in files.values():
        assert (two / "items" / name).read_bytes() == (one / "items" / name).read_bytes(), name
    assert not list((two / "items").glob("*.shard-*"))
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert [(c["id"], c["accuracy"], c["n"]) for c in r1["configs"]] == [(c["id"], c["accuracy"], c["n"]) for c in r2["configs"]]
    assert r2["wall"]["configs_computed"] == 2 and (two / "gallery.png").exists() and (two / "report.md").exists()
    ref, par = _records(setup["root"] / "trace-cmp-one")["rank0"], _records(setup["root"] / "trace-cmp-two")
    assert set(par) == {"rank0", "rank1"} and sum(len(r["items"]) for rs in par.values() for r in rs) == 2 * 7
    assert _pairs([r for rs in par.values() for r in rs]) <= _pairs(ref)


def test_killed_two_process_run_resumes_on_one(setup, reference):
    """Items file + shard files of a killed 2-process run, one cut mid-line: 1 process merges them and
    computes only the batches holding a missing item."""
    lines = reference.with_suffix(".items.jsonl").read_text().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    want = _rows(reference.with_suffix(".items.jsonl"))
    out = setup["root"] / "resume" / "r.json"
    items = out.with_suffix(".items.jsonl")
    items.parent.mkdir()
    items.write_text(header + rows[0])
    (items.parent / (items.name + ".shard-0")).write_text(header + "".join(rows[1:5]) + rows[10][:20])
    (items.parent / (items.name + ".shard-1")).write_text(header + rows[6] + rows[5])
    trace = setup["root"] / "trace-resume"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QAPRUNER_CACHE", str(setup["root"] / "cache-one"))
        _one_process([*_eval_args(setup), "--out", str(out)], trace)
    # 7..11 are missing: the batches of 5 holding them, [5, 10) and [10, 12), run whole (fixed boundaries)
    assert sum(len(r["items"]) for r in _records(trace)["rank0"]) == 7
    assert _rows(items) == want and not list(items.parent.glob("*.shard-*"))
    assert [json.loads(line)["uid"] for line in items.read_text().splitlines()[1:]] == list(want)  # item order


def test_merge_refuses_a_shard_of_another_configuration(tmp_path):
    from qapruner.errors import QAPrunerError
    from qapruner.eval.store import ItemStore, merge_shards, shard_path

    items = tmp_path / "i.jsonl"
    shard_path(items, 1).write_text(json.dumps({"config": {"task": "other"}}) + "\n")
    with ItemStore(items, {"task": "t"}) as store, pytest.raises(QAPrunerError, match="different configuration"):
        merge_shards(store, [])


@pytest.mark.parametrize("argv,env,message", [
    (["eval", "--processes", "0"], {}, "--processes must be a positive integer"),
    (["eval", "--threads", "0"], {}, "--threads must be a positive integer"),
    (["compare", "--from-archive", "x", "--processes", "2"], {}, "runs in one process; drop --processes"),
    (["compare", "--from-archive", "x"], {"WORLD_SIZE": "2"}, "runs in one process; launch it without"),
    (["eval", "--processes", "4"], {"WORLD_SIZE": "2"}, "--processes 4 disagrees with the 2 processes"),
    (["perplexity"], {"WORLD_SIZE": "2"}, "qapruner perplexity runs in one process"),
])
def test_parallel_option_errors_are_one_sentence(argv, env, message, capsys, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("qapruner: error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize("argv,env", [(["eval", "--processes", "2"], {}),  # qapruner's launcher
                                      (["eval"], {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"})])  # accelerate launch
def test_more_processes_than_gpus_is_one_sentence(argv, env, capsys, monkeypatch):
    """nccl needs one GPU per process (found on a 1-GPU machine: 'Duplicate GPU detected' deep inside nccl)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "needs one GPU per process and this machine has 1" in err and "Traceback" not in err
