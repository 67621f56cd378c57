"""Pruning inside ``model.generate`` (qapruner.deploy.generate) equals the evaluation harness on a tiny LLaVA:
same kept indices, same first-token logits, SDPA kept, FastV's KV cache consistent in later steps."""

import json

import pytest
import torch
from PIL import Image

from qapruner import cli
from qapruner.commands import generate as generate_cmd
from qapruner.deploy.generate import enable_pruning, prune_generation, question_ids
from qapruner.errors import QAPrunerError
from qapruner.eval.config import EvalConfig
from qapruner.eval.runner import Evaluator
from qapruner.models.llava import gather_tokens
from qapruner.models.registry import load_model
from qapruner.prune import PruneConfig, Pruner
from qapruner.tasks import load_task

PROMPTS = ["what color is it?",  # "it" is not in the tiny vocabulary: an <unk> in the question
           "is there a red circle in the image? answer the question using a single word",
           "what shape is in the image?"]
INPUT_HOSTS = ["random", "uniform", "cls", "divprune", "cdpruner"]
STEPS = 3


@pytest.fixture(scope="module")
def loaded(tiny_llava_dir):
    adapter = load_model(str(tiny_llava_dir))
    adapter.tokenizer.padding_side = "left"  # batched generation pads on the left
    return adapter


@pytest.fixture(scope="module")
def batch(loaded, tiny_jsonl):
    images = [Image.open(tiny_jsonl.parent / f"img{i}.png").convert("RGB") for i in range(3)]
    enc = loaded.processor(images=images, text=[loaded.user_turn(p) for p in PROMPTS], padding=True,
                           return_tensors="pt").to(loaded.device)
    assert len(set(enc["attention_mask"].sum(1).tolist())) == 3  # three lengths: left padding is exercised
    feats, cls = loaded.encode(enc["pixel_values"])
    return enc, feats, cls


def close(got, want):
    """Logits agree: to 1e-5 in fp32 (CPU); in the half precision a GPU loads llava-hf models in, to its rounding."""
    tol = 1e-5 if want.dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float().cpu(), want.float().cpu(), rtol=tol, atol=tol)


def same(a, b) -> bool:
    return torch.equal(a.cpu(), b.cpu())


def _generate(model, enc, **kw):
    return model.generate(**enc, max_new_tokens=STEPS, do_sample=False, output_logits=True,
                          return_dict_in_generate=True, **kw)


def test_question_is_the_user_text_after_the_image(loaded, batch):
    enc, _, _ = batch
    tok = loaded.tokenizer
    for row, mask, prompt in zip(enc["input_ids"].tolist(), enc["attention_mask"].tolist(), PROMPTS):
        row = [t for t, m in zip(row, mask) if m]
        after = row[len(row) - row[::-1].index(loaded.image_token_id):]
        assert question_ids(loaded, after) == tok(prompt, add_special_tokens=False)["input_ids"]
    # a prompt written without the chat template: everything after the image but the special tokens
    assert question_ids(loaded, tok("what shape ? <|im_end|>", add_special_tokens=False)["input_ids"]) == \
        tok("what shape ?", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("qa", [False, True], ids=["host", "qa"])
@pytest.mark.parametrize("host", INPUT_HOSTS)
def test_pre_llm_generate_equals_harness(loaded, batch, host, qa):
    enc, feats, cls = batch
    cfg = PruneConfig(host, 0.25, qa=qa)
    with prune_generation(loaded.model, loaded.processor, cfg) as handle:
        out = _generate(loaded.model, enc)
    ref = loaded.forward(feats, cls, PROMPTS, PROMPTS, Pruner(cfg))  # questions = the user text, as generate
    assert handle.last_keep.shape == (3, 4) and same(handle.last_keep, ref.keep)
    close(out.logits[0], ref.logits)
    # the caller's prompt ids come back in front of the new tokens, and the answer is the harness's
    assert same(out.sequences[:, : enc["input_ids"].shape[1]], enc["input_ids"])
    texts = loaded.forward(feats, cls, PROMPTS, PROMPTS, Pruner(cfg), generate=STEPS).texts
    new = out.sequences[:, enc["input_ids"].shape[1]:]
    assert loaded.tokenizer.batch_decode(new, skip_special_tokens=True) == texts
    assert (handle.last_questions is not None) == (host == "cdpruner")


def test_generate_equals_evaluator_kept_indices(loaded, tiny_jsonl, tmp_path):
    """Through the Evaluator (feature cache, item questions): the same kept tokens with prune_questions."""
    task = load_task(f"jsonl:{tiny_jsonl}")
    cfg = PruneConfig("cdpruner", 0.25, qa=True)
    Evaluator(loaded).run(task, EvalConfig(prune=cfg, batch_size=4), tmp_path / "items.jsonl")
    rows = {r["uid"]: r for r in map(json.loads, (tmp_path / "items.jsonl").read_text().splitlines()[1:])}
    items = task.items[:3]
    enc = loaded.processor(images=[task.load_image(it.image) for it in items],
                           text=[loaded.user_turn(it.prompt) for it in items], padding=True, return_tensors="pt")
    with prune_generation(loaded, cfg) as handle:
        loaded.model.generate(**enc, max_new_tokens=1, do_sample=False, prune_questions=[it.question for it in items])
    assert handle.last_keep.tolist() == [rows[it.uid]["kept"] for it in items]


@pytest.mark.parametrize("cfg", [PruneConfig("cdpruner", 1.0), PruneConfig("cdpruner", 0.99, qa=True),
                                 PruneConfig("fastv", 0.99, layer_k=1)], ids=["noop", "all-kept", "fastv-all-kept"])
def test_keeping_every_token_equals_plain_generate(loaded, batch, cfg):
    """keep = 1 passes through; keep 0.99 of 16 tokens keeps all 16 but runs the pruning path."""
    enc, _, _ = batch
    plain = _generate(loaded.model, enc)
    with prune_generation(loaded, cfg):
        ours = _generate(loaded.model, enc)
    assert same(ours.sequences, plain.sequences)
    for a, b in zip(ours.logits, plain.logits):
        close(a, b)


def _fastv_reference(adapter, feats, prompts, keep, k, new_tokens):
    """Logits of every step without a cache: layers < K over the whole sequence (prompt + tokens so far), then
    the prefill's unkept visual tokens dropped, layers ≥ K over the rest (prune.inllm's arithmetic)."""
    inputs = adapter.assemble(prompts, adapter.project(feats))
    vp = inputs.visual_positions
    out = []
    for t in range(new_tokens.shape[1]):
        extra = adapter.embed(new_tokens[:, :t])
        embeds = torch.cat([inputs.embeds, extra], 1)
        mask = torch.cat([inputs.mask, torch.ones_like(new_tokens[:, :t])], 1)
        pos = torch.cat([inputs.position_ids, inputs.position_ids[:, -1:] + 1 + torch.arange(t, device=mask.device)], 1)
        state = adapter.run_layers(adapter.decoder_state(embeds, mask, pos), 0, k)
        drop = torch.zeros(mask.shape, dtype=torch.bool, device=mask.device)
        drop.scatter_(1, vp, True)
        drop.scatter_(1, vp.gather(1, keep), False)
        order = torch.argsort(drop.to(torch.int8), dim=1, stable=True)[:, : mask.shape[1] - int(drop[0].sum())]
        state = adapter.decoder_state(gather_tokens(state.hidden, order), mask.gather(1, order), pos.gather(1, order))
        out.append(adapter.head(adapter.run_layers(state, k).hidden[:, -1:]))
    return out


@pytest.mark.parametrize("k,qa,rows", [(1, False, 3), (1, True, 3), (1, False, 1)], ids=["K1", "K1-qa", "K1-one-row"])
def test_fastv_generate_equals_harness_and_keeps_cache_consistent(loaded, batch, k, qa, rows):
    enc, feats, cls = batch
    if rows == 1:  # no padding: generate drops the attention mask
        enc = loaded.processor(images=[Image.new("RGB", (40, 40), (200, 30, 30))], text=[loaded.user_turn(PROMPTS[1])],
                               return_tensors="pt").to(loaded.device)
        feats, cls = loaded.encode(enc["pixel_values"])
    prompts = PROMPTS[:rows] if rows == 3 else [PROMPTS[1]]
    cfg = PruneConfig("fastv", 0.25, qa=qa, layer_k=k)
    with prune_generation(loaded, cfg) as handle:
        out = _generate(loaded.model, enc)
    ref = loaded.forward(feats, cls, prompts, prompts, Pruner(cfg))  # prune.inllm.prune_at_layer
    assert same(handle.last_keep, ref.keep)
    close(out.logits[0], ref.logits)
    assert same(out.sequences[:, : enc["input_ids"].shape[1]], enc["input_ids"])
    new = out.sequences[:, enc["input_ids"].shape[1]:]
    for got, want in zip(out.logits, _fastv_reference(loaded, feats, prompts, ref.keep, k, new)):
        close(got, want)
    dense = _generate(loaded.model, enc)
    assert not torch.allclose(out.logits[1], dense.logits[1], atol=1e-4)  # pruning did act in a decoding step


@pytest.fixture(scope="module")
def quantized(loaded):
    import copy

    from qapruner.quant import QuantConfig, quantize_

    model = copy.deepcopy(loaded.model)
    quantize_(model, QuantConfig.from_preset("w4a4"))
    return loaded.with_model(model)


@pytest.mark.parametrize("cfg", [PruneConfig("cdpruner", 0.25, qa=True, sensitivity="matched", alpha="dynamic"),
                                 PruneConfig("fastv", 0.25, qa=True, sensitivity="matched", layer_k=1)],
                         ids=["cdpruner", "fastv"])
def test_matched_sensitivity_on_a_quantized_model_equals_harness(quantized, batch, cfg):
    enc, feats, cls = batch
    with prune_generation(quantized, cfg) as handle:
        out = _generate(quantized.model, enc)
    ref = quantized.forward(feats, cls, PROMPTS, PROMPTS, Pruner(cfg))
    assert same(handle.last_keep, ref.keep)
    close(out.logits[0], ref.logits)


@pytest.mark.parametrize("host", ["cdpruner", "fastv"])
def test_sdpa_stays_the_attention_implementation(loaded, batch, monkeypatch, host):
    enc, _, _ = batch
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(q, *a, **kw):
        calls.append(q.shape[2] != 17)  # the vision tower's calls have 16 patches + [CLS]
        return sdpa(q, *a, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    with prune_generation(loaded, PruneConfig(host, 0.25, layer_k=1)):
        assert loaded.model.config.text_config._attn_implementation == "sdpa"
        loaded.model.generate(**enc, max_new_tokens=STEPS, do_sample=False)
    assert sum(calls) == loaded.num_layers * STEPS  # every LLM layer of every step


def test_pre_llm_output_keeps_the_callers_prompt_layout(loaded, batch):
    """max_length counts the caller's prompt; several sequences per prompt get the prompt repeated."""
    enc, _, _ = batch
    width = enc["input_ids"].shape[1]
    with prune_generation(loaded, PruneConfig("cls", 0.25)):
        out = loaded.model.generate(enc["input_ids"], attention_mask=enc["attention_mask"],
                                    pixel_values=enc["pixel_values"], max_length=width + 2, do_sample=False)
        beams = loaded.model.generate(**enc, max_new_tokens=2, num_beams=2, num_return_sequences=2, do_sample=False)
    assert out.shape == (3, width + 2) and same(out[:, :width], enc["input_ids"])
    assert beams.shape == (6, width + 2) and same(beams[::2, :width], enc["input_ids"])


def test_remove_restores_generate_and_refuses_twice(loaded):
    model = loaded.model
    handle = enable_pruning(model, loaded.processor, PruneConfig("random", 0.5))
    assert "generate" in model.__dict__
    with pytest.raises(QAPrunerError, match="already enabled"):
        enable_pruning(loaded, PruneConfig("cls", 0.5))
    handle.remove()
    handle.remove()  # idempotent
    assert "generate" not in model.__dict__ and model.generate.__func__ is type(model).generate


def test_bad_inputs_are_one_sentence(loaded, batch, tmp_path):
    enc, _, _ = batch
    with pytest.raises(QAPrunerError, match="needs a PruneConfig"):
        enable_pruning(loaded, None)
    with pytest.raises(QAPrunerError, match="outside the model's 2 decoder layers"):
        enable_pruning(loaded, PruneConfig("fastv", 0.5, layer_k=2))
    with prune_generation(loaded, PruneConfig("cdpruner", 0.5)):
        right = loaded.processor.tokenizer.padding_side
        loaded.processor.tokenizer.padding_side = "right"
        try:
            enc_r = loaded.processor(images=[Image.new("RGB", (40, 40))] * 2,
                                     text=[loaded.user_turn(p) for p in PROMPTS[:2]], padding=True, return_tensors="pt")
        finally:
            loaded.processor.tokenizer.padding_side = right
        with pytest.raises(QAPrunerError, match="left-padded"):
            loaded.model.generate(**enc_r, max_new_tokens=1)
        with pytest.raises(QAPrunerError, match="one image per prompt"):
            loaded.model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                  pixel_values=enc["pixel_values"][:2], max_new_tokens=1)
        with pytest.raises(QAPrunerError, match="prune_questions has 1 texts for 3 prompts"):
            loaded.model.generate(**enc, max_new_tokens=1, prune_questions=["one"])
    with prune_generation(loaded, PruneConfig("fastv", 0.5, layer_k=1)):
        with pytest.raises(QAPrunerError, match="needs the KV cache"):
            loaded.model.generate(**enc, max_new_tokens=1, use_cache=False)
        with pytest.raises(QAPrunerError, match="one sequence per prompt"):
            loaded.model.generate(**enc, max_new_tokens=2, num_beams=2)
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, vocab_size=50))
    with pytest.raises(QAPrunerError, match="needs a LLaVA model"):
        enable_pruning(llama, loaded.processor, PruneConfig("cls", 0.5))


# ---- the command ----------------------------------------------------------------------------------------------
def _main(argv, monkeypatch):
    assert generate_cmd in cli.COMMANDS
    return cli.main(argv)


def test_cli_generate_prints_the_greedy_answer(tiny_llava_dir, tiny_jsonl, monkeypatch, capsys):
    base = ["generate", "--model", str(tiny_llava_dir), "--image", str(tiny_jsonl.parent / "img1.png"),
            "--prompt", PROMPTS[0], "--max-new-tokens", "3"]
    answers = []
    for extra in ([], ["--prune", "cdpruner", "--keep", "0.25", "--qa", "--alpha", "0.5", "--verbose"],
                  ["--prune", "cdpruner", "--keep", "0.25", "--qa", "--alpha", "0.5"],
                  ["--prune", "fastv", "--keep", "0.5", "--layer-k", "1", "--quant", "w4a8"]):
        assert _main(base + extra, monkeypatch) == 0
        cap = capsys.readouterr()
        answers.append(cap.out.strip())
        assert cap.out.count("\n") == 1 and answers[-1]
        if "--verbose" in extra:
            assert "visual tokens kept 4/16" in cap.err
    assert answers[1] == answers[2]  # greedy: deterministic


@pytest.mark.parametrize("extra,message", [
    (["--image", "/nonexistent.png"], "does not exist"),
    (["--image", "SELF"], "Cannot read image"),
    (["--keep", "0.5"], "need a pruning host"),
    (["--prune", "cls"], "needs --keep"),
    (["--prune", "nope", "--keep", "0.5"], "Unknown pruning host"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be a positive"),
    (["--quant", "w5a3x"], "preset"),
    (["--model", "/nonexistent/model"], "does not exist"),
    (["--quant", "w4a4", "--real"], "no kernel here executes w4a4"),
])
def test_cli_generate_bad_input_is_one_sentence_and_exit_2(tiny_llava_dir, tiny_jsonl, monkeypatch, capsys,
                                                            extra, message):
    image = str(tiny_jsonl.parent / "img0.png")
    extra = [str(tiny_jsonl) if x == "SELF" else x for x in extra]
    argv = ["generate", "--model", str(tiny_llava_dir), "--image", image, "--prompt", "what?"] + extra
    rc = _main(argv, monkeypatch)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("qapruner: error: ") and message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_cli_generate_real_runs_the_real_kernels_of_a_preset(tiny_llava_dir, tiny_jsonl, monkeypatch, capsys):
    """`--real` with an in-memory W8A8 preset: torchao's int8 kernels answer, pruning still applies."""
    argv = ["generate", "--model", str(tiny_llava_dir), "--image", str(tiny_jsonl.parent / "img1.png"),
            "--prompt", PROMPTS[0], "--max-new-tokens", "3", "--quant", "w8a8", "--real", "--verbose",
            "--prune", "cdpruner", "--keep", "0.25", "--qa"]
    assert _main(argv, monkeypatch) == 0
    cap = capsys.readouterr()
    assert cap.out.strip() and cap.out.count("\n") == 1
    assert "real kernels: {'int8-dynamic': 14}" in cap.err and "visual tokens kept 4/16" in cap.err


def test_cli_generate_real_on_an_export_without_pruning(tiny_llava_dir, tiny_jsonl, tmp_path, monkeypatch, capsys):
    """An exported W8A8 checkpoint, loaded packed, answers on int8 kernels through transformers' own generate
    (the tower's float32 output meets the bf16 projector) and gives the answer of the in-memory preset."""
    export = tmp_path / "w8a8"
    assert _main(["quantize", "--model", str(tiny_llava_dir), "--quant", "w8a8", "--out", str(export)], monkeypatch) == 0
    capsys.readouterr()
    base = ["generate", "--image", str(tiny_jsonl.parent / "img1.png"), "--prompt", PROMPTS[0],
            "--max-new-tokens", "3", "--real", "--verbose"]
    answers = []
    for model in (["--model", str(export)], ["--model", str(tiny_llava_dir), "--quant", "w8a8"]):
        assert _main(base + model, monkeypatch) == 0
        cap = capsys.readouterr()
        assert "real kernels: {'int8-dynamic': 14}" in cap.err and "visual tokens kept 16/16" in cap.err
        answers.append(cap.out)
    assert answers[0] == answers[1] and answers[0].strip()
