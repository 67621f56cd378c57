"""The evaluation runner end to end on a tiny random LLaVA loaded through the hub-model code path."""

import json

import pytest
import torch

from qapruner.cli import main
from qapruner.eval.config import EvalConfig
from qapruner.eval.runner import Evaluator
from qapruner.models.llava import LlavaAdapter
from qapruner.models.registry import load_model
from qapruner.prune import PruneConfig
from qapruner.tasks import load_task


@pytest.fixture(scope="module")
def loaded(tiny_llava_dir):
    return load_model(str(tiny_llava_dir))


def _preds(path):
    rows = [json.loads(l) for l in path.read_text().splitlines()[1:]]
    return {r["uid"]: r for r in rows}


def test_spliced_input_equals_hf_llava_forward(loaded, tiny_jsonl):
    """Our path (cached features → projector → splice) gives the logits of LlavaForConditionalGeneration itself."""
    task = load_task(f"jsonl:{tiny_jsonl}")
    model, proc = loaded.model, loaded.processor
    text = loaded.user_turn(task.items[0].prompt)
    enc = proc(images=[task.load_image(0)], text=[text], return_tensors="pt").to(loaded.device)
    with torch.no_grad():
        ref = model(**enc).logits[0, -1]
        feats, _ = loaded.encode(enc["pixel_values"])
        inputs = loaded.assemble([task.items[0].prompt], loaded.project(feats))
        assert loaded.token_row(task.items[0].prompt, 16) == enc["input_ids"][0].tolist()
        ours = loaded.last_logits(inputs)[0]
        out = loaded.forward(feats, torch.zeros(1, 16), [task.items[0].prompt], [task.items[0].question])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.logits[0], ours) and out.keep is None and out.n_visual == 16


@pytest.mark.parametrize("prune", [None, PruneConfig("cdpruner", 0.25, qa=True), PruneConfig("fastv", 0.5, layer_k=1)])
def test_predictions_do_not_depend_on_batch_size(loaded, tiny_jsonl, tmp_path, prune):
    """Left padding + position ids from the mask: an item's answer is the same alone or in a batch."""
    task = load_task(f"jsonl:{tiny_jsonl}")
    ev = Evaluator(loaded)
    one = ev.run(task, EvalConfig(prune=prune, batch_size=1), tmp_path / "b1.jsonl")
    five = ev.run(task, EvalConfig(prune=prune, batch_size=5), tmp_path / "b5.jsonl")
    assert one["accuracy"] == five["accuracy"]
    p1, p5 = _preds(tmp_path / "b1.jsonl"), _preds(tmp_path / "b5.jsonl")
    assert {u: r["pred"] for u, r in p1.items()} == {u: r["pred"] for u, r in p5.items()}
    if prune is not None:
        k = round(prune.keep * 16)
        assert one["visual_tokens"] == {"before": 16, "kept": k}
        assert all(r["kept"] == p5[u]["kept"] and len(r["kept"]) == k for u, r in p1.items())


def test_rerun_resumes_without_recomputing(loaded, tiny_jsonl, tmp_path, monkeypatch):
    task = load_task(f"jsonl:{tiny_jsonl}")
    items = tmp_path / "items.jsonl"
    first = Evaluator(loaded).run(task, EvalConfig(batch_size=4), items)
    lines = items.read_text().splitlines()
    items.write_text("\n".join(lines[:6]) + "\n" + lines[6][:10])  # interrupted mid-write after 5 items
    calls = []
    original = LlavaAdapter.forward

    def counting(self, feats, *a, **k):
        calls.append(len(feats))
        return original(self, feats, *a, **k)

    monkeypatch.setattr(LlavaAdapter, "forward", counting)
    again = Evaluator(loaded).run(task, EvalConfig(batch_size=4), items)
    # fixed batch boundaries: batch [4, 8) holds the missing items 5..7, so it runs whole (with item 4) as in the
    # uninterrupted run; then [8, 12)
    assert sum(calls) == 8 and again["accuracy"] == first["accuracy"]
    assert len(items.read_text().splitlines()) == 13


def test_store_refuses_other_configuration(loaded, tiny_jsonl, tmp_path):
    from qapruner.errors import QAPrunerError

    task = load_task(f"jsonl:{tiny_jsonl}")
    Evaluator(loaded).run(task, EvalConfig(), tmp_path / "i.jsonl")
    with pytest.raises(QAPrunerError, match="different configuration"):
        Evaluator(loaded).run(task, EvalConfig(prune=PruneConfig("random", 0.5)), tmp_path / "i.jsonl")


def test_cli_eval_writes_summary(tiny_llava_dir, tiny_jsonl, tmp_path):
    out = tmp_path / "r.json"
    rc = main(["eval", "--model", str(tiny_llava_dir), "--task", f"jsonl:{tiny_jsonl}", "--prune", "divprune",
               "--keep", "0.5", "--qa", "--quant", "w4a8", "--out", str(out)])
    assert rc == 0
    s = json.loads(out.read_text())
    for key in ("task", "model", "n", "accuracy", "ci95", "quant", "prune", "visual_tokens", "seconds"):
        assert key in s
    assert s["n"] == 12 and s["quant"] == "w4a8" and s["prune"]["host"] == "divprune" and s["prune"]["qa"]
    assert s["visual_tokens"] == {"before": 16, "kept": 8}
    assert s["ci95"][0] <= s["accuracy"] <= s["ci95"][1]


def test_generate_mode_parses_answers(loaded, tiny_jsonl, tmp_path):
    task = load_task(f"jsonl:{tiny_jsonl}")
    s = Evaluator(loaded).run(task, EvalConfig(mode="generate", max_new_tokens=3), tmp_path / "g.jsonl")
    assert s["n"] == 12 and 0.0 <= s["accuracy"] <= 1.0


@pytest.mark.parametrize("argv,message", [
    (["eval", "--limit", "0"], "--limit must be a positive"),
    (["eval", "--task", "imagenet"], "Unknown task"),
    (["eval", "--model", "/nonexistent/model"], "does not exist"),
    (["eval", "--prune", "cls"], "needs --keep"),
    (["eval", "--prune", "cls", "--keep", "-1"], "Keep ratio"),
    (["eval", "--prune", "nope", "--keep", "0.5"], "Unknown pruning host"),
    (["eval", "--quant", "w5a3x"], ""),
])
def test_bad_input_is_one_sentence_and_exit_2(argv, message, capsys, tmp_path):
    rc = main(argv + ["--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("qapruner: error: ") and message in err
    assert "Traceback" not in err and not (tmp_path / "x.json").exists()


def test_unsupported_model_type(tmp_path, tiny_jsonl, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                 vocab_size=50)).save_pretrained(tmp_path / "llama")
    rc = main(["eval", "--model", str(tmp_path / "llama"), "--task", f"jsonl:{tiny_jsonl}", "--limit", "2"])
    assert rc == 2 and "supports LLaVA-family" in capsys.readouterr().err


def test_blank_image_task_keeps_questions_and_drops_images(tiny_jsonl):
    task = load_task(f"jsonl:{tiny_jsonl}").blank()
    assert task.image_count == 1 and {it.image for it in task.items} == {0} and len(task.items) == 12
    img = task.load_image(0)
    assert img.getextrema() == ((255, 255), (255, 255), (255, 255))


def test_fastv_with_matched_sensitivity_uses_layer_k_quantizer(tiny_llava_dir, tiny_jsonl, tmp_path, capsys):
    out = tmp_path / "f.json"
    args = ["eval", "--model", str(tiny_llava_dir), "--task", f"jsonl:{tiny_jsonl}", "--prune", "fastv", "--keep",
            "0.25", "--qa", "--sensitivity", "matched", "--layer-k", "1", "--out", str(out)]
    assert main(args + ["--quant", "w4a4"]) == 0
    s = json.loads(out.read_text())
    assert s["visual_tokens"] == {"before": 16, "kept": 4} and s["prune"]["sensitivity"] == "matched"
    # an FP model has no quantizer to match: one sentence, exit 2
    assert main(args[:-1] + [str(tmp_path / "g.json")]) == 2
    assert "no activation quantizer to match" in capsys.readouterr().err



def test_bfloat16_execution_of_fp_and_weight_only_rows(tiny_llava_dir, tiny_jsonl, tmp_path):
    """--dtype bfloat16 runs the projector and the language model in bf16 (the vision tower keeps its dtype)."""
    for quant in ([], ["--quant", "w4a16"]):
        out = tmp_path / f"bf16{len(quant)}.json"
        assert main(["eval", "--model", str(tiny_llava_dir), "--task", f"jsonl:{tiny_jsonl}", "--dtype", "bfloat16",
                     "--prune", "cdpruner", "--keep", "0.5", "--qa", *quant, "--out", str(out)]) == 0
        s = json.loads(out.read_text())
        assert s["config"]["dtype"] == "bfloat16" and s["n"] == 12 and s["visual_tokens"]["kept"] == 8
    adapter = load_model(str(tiny_llava_dir))
    loaded_dtype = adapter.parts.vision_tower.embeddings.patch_embeddings.projection.weight.dtype  # fp16 on a GPU
    adapter.cast(torch.bfloat16)
    assert adapter.parts.lm.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert adapter.parts.vision_tower.embeddings.patch_embeddings.projection.weight.dtype == loaded_dtype


@pytest.mark.parametrize("quant,kernel", [([], None), (["--quant", "w4a16"], "int4"), (["--quant", "w8a8"], "int8-dynamic")])
def test_real_kernels_in_eval(tiny_llava_dir, tiny_jsonl, tmp_path, quant, kernel):
    out = tmp_path / "real.json"
    assert main(["eval", "--model", str(tiny_llava_dir), "--task", f"jsonl:{tiny_jsonl}", "--real", *quant,
                 "--prune", "cls", "--keep", "0.5", "--out", str(out)]) == 0
    s = json.loads(out.read_text())
    assert s["config"]["real"] and s["config"]["dtype"] == "bfloat16" and s["n"] == 12
    if kernel:
        assert kernel in s["quant_info"]["kernels"]
