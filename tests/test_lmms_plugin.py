"""The lmms-eval plugin (``qapruner.lmms``): ``python -m lmms_eval --model qapruner`` on qapruner's task YAMLs gives
the per-item predictions and the accuracy of ``qapruner eval`` on the same items (generate tasks = ``--mode
generate``, ``*_mc`` tasks = ``--mode choice`` where every candidate is one token)."""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from qapruner.cli import main
from qapruner.errors import QAPrunerError
from qapruner.eval.prepare import quantized_copy
from qapruner.eval.scoring import choice_first_tokens, parse_generated
from qapruner.lmms import TASKS_DIR
from qapruner.lmms.engine import Engine, Visual
from qapruner.lmms.options import parse_options
from qapruner.models.features import FeatureCache
from qapruner.models.registry import load_model
from qapruner.prune import PruneConfig, Pruner
from qapruner.quant import QuantConfig
from qapruner.tasks import load_task

needs_lmms = pytest.mark.skipif(importlib.util.find_spec("lmms_eval") is None,
                                reason="lmms-eval is not installed (`make setup` installs it: the [lmms] extra, then "
                                       "lmms-eval==0.7.3 with --no-deps; docs/lmms_eval.md)")


# ---- helpers: run lmms-eval, read what it wrote ----------------------------------------------------------------
def _entry_point_registered() -> bool:
    return any(ep.name == "qapruner" for ep in importlib.metadata.entry_points(group="lmms_eval.models"))


def start_lmms(model_args: str, tasks: str, out: Path, batch_size: int, **env) -> subprocess.Popen:
    """``python -m lmms_eval --model qapruner ...`` in the background, offline, logging every sample."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", **env)
    if not _entry_point_registered():  # the installed package has no lmms_eval.models entry point: lmms-eval's variable
        env["LMMS_EVAL_PLUGINS"] = "qapruner.lmms"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "qapruner", "--model_args", model_args,
           "--include_path", str(TASKS_DIR), "--tasks", tasks, "--batch_size", str(batch_size),
           "--output_path", str(out), "--log_samples"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish_lmms(proc: subprocess.Popen, out: Path) -> dict:
    log, _ = proc.communicate(timeout=600)
    files = glob.glob(str(out / "*" / "*_results.json"))
    assert proc.returncode == 0 and files, f"lmms-eval failed:\n{log[-4000:]}"
    return json.loads(Path(files[0]).read_text())["results"]


def samples(out: Path, task: str) -> list[dict]:
    (path,) = glob.glob(str(out / "*" / f"*_samples_{task}.jsonl"))
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["doc_id"])


def qapruner_items(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in out.with_suffix(".items.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "uid" in r]


def generated_preds(rows: list[dict], items) -> list[str]:
    """``qapruner eval --mode generate``'s answer from each logged generation."""
    return [parse_generated(r["filtered_resps"] if isinstance(r["filtered_resps"], str) else r["filtered_resps"][0],
                            it.choices) for r, it in zip(rows, items)]


def choice_preds(rows: list[dict], items) -> list[str]:
    """lmms-eval's multiple_choice answer: the candidate with the smallest negative log-likelihood."""
    return [it.choices[int(np.argmin([float(nll) for nll, _ in r["filtered_resps"]]))] for r, it in zip(rows, items)]


def assert_same(lmms_preds, lmms_acc, q_out: Path):
    q_rows = qapruner_items(q_out)
    assert lmms_preds == [r["pred"] for r in q_rows]
    assert lmms_acc == pytest.approx(json.loads(q_out.read_text())["accuracy"], abs=1e-12)


def choice_mode_nll(model: Path, task_name: str, preset: str, calib_samples: int, prune, batch_size: int) -> np.ndarray:
    """(items, candidates) -log p(first token of each candidate) as ``qapruner eval --mode choice`` computes the
    scores it compares: qapruner's API, without the plugin."""
    adapter, task = load_model(str(model)), load_task(task_name)
    model_q, _ = quantized_copy(adapter, QuantConfig.from_preset(preset), task, calib_samples, 0)
    cache, pruner, rows = FeatureCache(adapter, task), Pruner(prune), []
    for s in range(0, len(task.items), batch_size):
        batch = task.items[s : s + batch_size]
        feats, cls = cache.get([it.image for it in batch])
        out = model_q.forward(feats, cls, [it.prompt for it in batch], [it.question for it in batch], pruner, 0)
        logp = torch.log_softmax(out.logits.float(), -1)
        rows += [(-logp[i, choice_first_tokens(adapter.tokenizer, it.choices)]).tolist() for i, it in enumerate(batch)]
    return np.array(rows)


# ---- model_args: qapruner's own validation, one sentence each ---------------------------------------------------
@pytest.mark.parametrize("args, message", [
    ({"quant": "w5a5x"}, "Bad quantization preset 'w5a5x'"),
    ({"prune": "cdpruner", "keep": 1.5}, "Keep ratio must be a number in (0, 1], got 1.5."),
    ({"prune": "cdpruner", "keep": "lots"}, "model_args keep='lots' must be a number in (0, 1]."),
    ({"prune": "cdpruner"}, "model_args prune= needs keep=RATIO"),
    ({"keep": 0.5}, "model_args keep= and qa= need a pruning host: add prune=HOST."),
    ({"prune": "nope", "keep": 0.5}, "Unknown pruning host 'nope'"),
    ({"alpha": 0.5, "prune": "cls", "keep": 0.5, "qa": True, "colour": "red"}, "Unknown model_args key(s) colour"),
    ({"calib": "mnist"}, "Unknown task 'mnist'"),
    ({"batch_size": "0"}, "model_args batch_size=0 must be a positive integer."),
    ({"calib_seed": "-1"}, "model_args calib_seed='-1' must be"),
])
def test_bad_model_args_fail_in_one_sentence(args, message):
    with pytest.raises(QAPrunerError) as exc:
        parse_options(args)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_model_args_as_lmms_eval_passes_them():
    o = parse_options({"model": "testbed", "quant": "w4a4-rot-gptq", "prune": "cdpruner", "keep": 0.25, "qa": True,
                       "alpha": "dynamic", "batch_size": "auto", "device": None, "max_batch_size": None})
    assert o.config.preset == "w4a4-rot-gptq" and o.config.model == "testbed:v7" and o.config.batch_size == 16
    assert (o.config.prune.host, o.config.prune.keep, o.config.prune.qa, o.config.prune.alpha) == ("cdpruner", 0.25, True, "dynamic")
    assert o.calib is None and o.feature_cache
    assert o.config.calib_seed is None and o.config.calibration_seed == 0
    assert parse_options({"model": "testbed", "calib_seed": "3"}).config.calibration_seed == 3


# ---- the engine (no lmms-eval): PIL images, several-token continuations -----------------------------------------
def test_pil_images_score_and_generate_like_the_feature_cache(tiny_llava_dir, tiny_jsonl):
    task = load_task(f"jsonl:{tiny_jsonl}")
    items = task.items[:5]
    args = {"model": str(tiny_llava_dir), "prune": "cdpruner", "keep": 0.5, "qa": True}
    cached, pil = Engine(parse_options(args)), Engine(parse_options(dict(args, feature_cache=False)))
    name = f"jsonl:{tiny_jsonl}"
    by_id = [Visual(task=name, index=it.image) for it in items]
    by_pil = [Visual(image=task.load_image(it.image)) for it in items]
    prompts, questions = [it.prompt for it in items], [it.question for it in items]
    conts = [[cached.tokenizer(c, add_special_tokens=False)["input_ids"] for c in it.choices] for it in items]
    a, b = cached.score(by_id, prompts, questions, conts), pil.score(by_pil, prompts, questions, conts)
    assert np.allclose(np.array(a)[..., 0], np.array(b)[..., 0], atol=1e-4)
    assert cached.generate(by_id, prompts, questions, 4) == pil.generate(by_pil, prompts, questions, 4)


def test_several_token_continuations_match_the_hf_forward(tiny_llava_dir, tiny_jsonl):
    """Teacher forcing through the adapter's path = transformers' own LlavaForConditionalGeneration forward."""
    task = load_task(f"jsonl:{tiny_jsonl}")
    engine = Engine(parse_options({"model": str(tiny_llava_dir)}))
    tok, adapter = engine.tokenizer, engine.adapter
    items = task.items[:3]
    conts = [[tok("red green", add_special_tokens=False)["input_ids"], tok("blue", add_special_tokens=False)["input_ids"],
              tok("the yellow shape", add_special_tokens=False)["input_ids"]]] * len(items)
    got = engine.score([Visual(f"jsonl:{tiny_jsonl}", it.image) for it in items], [it.prompt for it in items],
                       [it.question for it in items], conts)
    pixels = adapter.processor.image_processor([task.load_image(it.image) for it in items], return_tensors="pt")["pixel_values"]
    fp32 = adapter.model.dtype == torch.float32  # a GPU loads the model in fp16: the two paths agree to its rounding
    for i, it in enumerate(items):
        for j, cont in enumerate(conts[i]):
            ids = torch.tensor([adapter.token_row(it.prompt, adapter.n_visual) + cont], device=adapter.device)
            with torch.no_grad():
                logits = adapter.model(input_ids=ids, pixel_values=pixels[i : i + 1].to(adapter.device,
                                                                                         adapter.model.dtype)).logits[0]
            logp = torch.log_softmax(logits[-len(cont) - 1 : -1].float(), -1).cpu()
            want = -logp.gather(1, torch.tensor(cont)[:, None]).sum().item()
            assert got[i][j][0] == pytest.approx(want, abs=1e-4 if fp32 else 5e-2)
            if fp32:  # a near-tie may flip in fp16
                assert got[i][j][1] == bool(torch.equal(logp.argmax(-1), torch.tensor(cont)))


def test_fastv_takes_one_token_continuations_only(tiny_llava_dir, tiny_jsonl):
    task = load_task(f"jsonl:{tiny_jsonl}")
    engine = Engine(parse_options({"model": str(tiny_llava_dir), "prune": "fastv", "keep": 0.5, "layer_k": 1}))
    it, v = task.items[0], Visual(f"jsonl:{tiny_jsonl}", task.items[0].image)
    one = engine.score([v], [it.prompt], [it.question], [[[7]]])
    assert one[0][0][0] > 0
    with pytest.raises(QAPrunerError, match="one answer token only"):
        engine.score([v], [it.prompt], [it.question], [[[7, 8]]])


# ---- lmms-eval end to end ------------------------------------------------------------------------------------
@needs_lmms
def test_entry_point_payload_resolves_to_the_model_class():
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    from qapruner.lmms import manifests
    from qapruner.lmms.models.qapruner import QAPruner

    registry = ModelRegistryV2()
    registry.register_manifest(manifests()[0])
    assert registry.get_model_class("qapruner") is QAPruner


@needs_lmms
def test_lmms_eval_end_to_end_on_a_tiny_model_equals_qapruner_eval(tiny_llava_dir, tiny_jsonl, tmp_path):
    """GPTQ (calibrated on the task itself, found from the documents) + CDPruner-QA at keep 0.5, batches of 5."""
    out = tmp_path / "lmms"
    proc = start_lmms(f"model={tiny_llava_dir},quant=w4a8-gptq,calib_samples=8,prune=cdpruner,keep=0.5,qa=true",
                      "qapruner_jsonl,qapruner_jsonl_mc", out, 5, QAPRUNER_LMMS_JSONL=str(tiny_jsonl),
                      HF_DATASETS_CACHE=str(tmp_path / "hf"))
    common = ["--model", str(tiny_llava_dir), "--task", f"jsonl:{tiny_jsonl}", "--quant", "w4a8-gptq",
              "--calib-samples", "8", "--prune", "cdpruner", "--keep", "0.5", "--qa", "--batch-size", "5"]
    for mode in ("generate", "choice"):  # meanwhile, qapruner eval on the same items
        assert main(["eval", *common, "--mode", mode, "--out", str(tmp_path / f"{mode}.json")]) == 0
    results = finish_lmms(proc, out)
    items = load_task(f"jsonl:{tiny_jsonl}").items
    gen, mc = samples(out, "qapruner_jsonl"), samples(out, "qapruner_jsonl_mc")
    assert len(gen) == len(mc) == len(items) == 12
    assert_same(generated_preds(gen, items), results["qapruner_jsonl"]["accuracy,none"], tmp_path / "generate.json")
    assert_same(choice_preds(mc, items), results["qapruner_jsonl_mc"]["acc,none"], tmp_path / "choice.json")
    # every candidate's logged score is the choice-mode score: -log softmax of the next-token logits of the same
    # quantized, pruned forward pass (so the test does not rest on a random model's argmax alone)
    want = choice_mode_nll(tiny_llava_dir, f"jsonl:{tiny_jsonl}", "w4a8-gptq", 8, PruneConfig("cdpruner", 0.5, qa=True), 5)
    got = np.array([[float(nll) for nll, _ in r["filtered_resps"]] for r in mc])
    assert np.allclose(got, want, atol=1e-4) and np.ptp(want, axis=1).min() > 0


# ---- the real testbed (shared cache) ---------------------------------------------------------------------------
GENERATE_EASY_VQA = ("easy-vqa", "generate", "qapruner_easy_vqa")
CHOICE_FASHION = ("fashion-mnist", "choice", "qapruner_fashion_mnist_mc")  # one-letter candidates: mc = choice mode
TESTBED_CONFIGS = {  # name: (model_args, qapruner eval flags, [(qapruner task, --mode, lmms-eval task)])
    "fp": ("", [], [GENERATE_EASY_VQA, CHOICE_FASHION]),
    "w8a8+cdpruner-qa": (",quant=w8a8,prune=cdpruner,keep=0.25,qa=true",
                         ["--quant", "w8a8", "--prune", "cdpruner", "--keep", "0.25", "--qa"], [GENERATE_EASY_VQA]),
}


@needs_lmms
@pytest.mark.testbed
@pytest.mark.parametrize("name", list(TESTBED_CONFIGS))
def test_testbed_lmms_eval_equals_qapruner_eval(name, tmp_path):
    """8 items of each task, the subset of ``qapruner eval --limit 8 --seed 0``: the answers and the accuracy
    through ``python -m lmms_eval`` equal ``qapruner eval``'s (the two run side by side)."""
    model_args, flags, runs = TESTBED_CONFIGS[name]
    out, n = tmp_path / "lmms", 8
    proc = start_lmms(f"model=testbed{model_args}", ",".join(r[2] for r in runs), out, n,
                      QAPRUNER_LMMS_LIMIT=str(n), QAPRUNER_LMMS_SEED="0")
    for task, mode, _ in runs:
        argv = ["eval", "--model", "testbed", "--task", task, "--limit", str(n), "--seed", "0", "--mode", mode,
                "--batch-size", str(n), *flags, "--out", str(tmp_path / f"{task}.json")]
        assert main(argv) == 0
    results = finish_lmms(proc, out)
    for task, mode, lmms_task in runs:
        items = load_task(task).subset(n, 0).items
        rows = samples(out, lmms_task)
        assert len(rows) == n
        if mode == "generate":
            assert_same(generated_preds(rows, items), results[lmms_task]["accuracy,none"], tmp_path / f"{task}.json")
        else:
            assert_same(choice_preds(rows, items), results[lmms_task]["acc,none"], tmp_path / f"{task}.json")
