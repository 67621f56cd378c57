"""CDPruner with CLIP relevance (``--relevance clip:MODEL``) on a tiny llava-1.5-shaped model with a CLIP vision
tower, checked against a transcription of CDPruner's public selection code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from qapruner.errors import QAPrunerError
from qapruner.models.registry import load_model
from qapruner.prune import PruneConfig, Pruner, num_keep

QUESTIONS = ["what is the shape in the image?", "is there a red circle?", "what color is the item of clothing?"]


@pytest.fixture(scope="module")
def clip_llava(tmp_path_factory):
    from tiny_checkpoint import build_tiny_clip_llava

    llava_dir, clip_dir = build_tiny_clip_llava(tmp_path_factory.mktemp("clip_llava"))
    adapter = load_model(str(llava_dir), device=torch.device("cpu"))  # the transcription's float32 on any machine
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)) for _ in QUESTIONS]
    pixels = adapter.processor.image_processor(images, return_tensors="pt")["pixel_values"]
    feats, cls = adapter.encode(pixels)
    return adapter, str(clip_dir), feats, cls, llava_dir


def cdpruner_reference(image_outputs, projector, vision_model, clip_dir, question, keep_n):
    """Transcribed from Theia-4869/CDPruner (clip_encoder.CLIPVisionTower.forward with texts, and
    llava_arch.encode_images), for one image: returns the kept indices, ascending."""
    from transformers import CLIPModel, CLIPTokenizerFast

    clip = CLIPModel.from_pretrained(clip_dir).eval()
    tokenizer = CLIPTokenizerFast.from_pretrained(clip_dir)
    max_pos = clip.config.text_config.max_position_embeddings
    with torch.no_grad():
        text_inputs = tokenizer(text=question, return_tensors="pt")
        text_segment = (text_inputs.input_ids.shape[1] - 1) // max_pos + 1
        text_padding = max_pos * text_segment - text_inputs.input_ids.shape[1]
        text_inputs = {k: torch.cat([v, v.new_zeros((v.shape[0], text_padding))], dim=1).reshape(-1, max_pos)
                       for k, v in text_inputs.items()}
        text_embeds = clip.text_projection(clip.text_model(**text_inputs).pooler_output)  # .text_embeds
        image_embeds = vision_model.post_layernorm(image_outputs)
        image_embeds = clip.visual_projection(image_embeds.float())

        image_features = projector(image_outputs)
        B, N, C = image_features.shape
        image_normalized = image_features / image_features.norm(dim=-1, keepdim=True)
        image_normalized = image_normalized.float()
        similarity = torch.matmul(image_normalized, image_normalized.transpose(1, 2))
        image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
        text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
        relevance = torch.matmul(image_embeds, text_embeds.t())
        relevance = (-relevance).mean(dim=-1)
        relevance = (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())
        kernel = relevance.unsqueeze(2) * similarity * relevance.unsqueeze(1)
        cis = torch.zeros((keep_n, B, N))
        di2s = torch.diagonal(kernel, dim1=1, dim2=2).clone()
        select_idx = torch.empty((keep_n, B), dtype=torch.long)
        for i in range(keep_n):
            j = torch.argmax(di2s, dim=-1)
            select_idx[i] = j
            eis = (kernel[torch.arange(B), j] - torch.einsum("tb,tbn->bn", cis[:i, torch.arange(B), j], cis[:i])) \
                / torch.sqrt(di2s[torch.arange(B), j]).unsqueeze(-1)
            cis[i, :, :] = eis
            di2s -= torch.square(eis)
            di2s[torch.arange(B), j] = -float("inf")
        return torch.sort(select_idx.t()).values[0].tolist(), relevance[0]


@pytest.mark.parametrize("keep", [0.25, 0.5])
def test_clip_relevance_selects_what_cdpruner_selects(clip_llava, keep):
    adapter, clip_dir, feats, cls, _ = clip_llava
    pruner = Pruner(PruneConfig("cdpruner", keep, relevance=f"clip:{clip_dir}"))
    prompts = QUESTIONS
    out = adapter.forward(feats, cls, prompts, QUESTIONS, pruner)  # the whole batch at once
    k = num_keep(keep, 16)
    tower = adapter.parts.vision_tower
    vision_model = getattr(tower, "vision_model", tower)
    for i, q in enumerate(QUESTIONS):
        ref, rel = cdpruner_reference(feats[i : i + 1], adapter.parts.projector, vision_model, clip_dir, q, k)
        assert out.keep[i].tolist() == ref
        ctx = adapter.prune_context(pruner, adapter.project(feats[i : i + 1]), cls[i : i + 1], [q],
                                    features=feats[i : i + 1])
        torch.testing.assert_close(pruner.scores(ctx)[0], rel, rtol=1e-5, atol=1e-6)
    # the question is read: 8-position segments, so these questions span 3 or 4 segments
    assert adapter.clip_relevance(clip_dir).text_embeds(QUESTIONS)[1].sum(1).tolist() == [4, 3, 4]
    llm = Pruner(PruneConfig("cdpruner", keep)).select(
        adapter.prune_context(Pruner(PruneConfig("cdpruner", keep)), adapter.project(feats), cls, QUESTIONS))
    assert not torch.equal(llm, out.keep)  # the LLM-space relevance is another signal


def test_clip_relevance_qa_variant_and_key(clip_llava):
    adapter, clip_dir, feats, cls, _ = clip_llava
    qa = Pruner(PruneConfig("cdpruner", 0.25, qa=True, relevance=f"clip:{clip_dir}", group_size=16))
    out = adapter.forward(feats, cls, QUESTIONS, QUESTIONS, qa)
    assert out.keep.shape == (3, 4)
    from qapruner.eval.config import EvalConfig

    plain = EvalConfig(prune=PruneConfig("cdpruner", 0.25)).key()
    assert "relevance" not in plain["prune"]  # keys of runs made before the option stay valid
    assert EvalConfig(prune=PruneConfig("cdpruner", 0.25, relevance=f"clip:{clip_dir}")).key()["prune"]["relevance"] \
        == f"clip:{clip_dir}"


def test_clip_relevance_errors(clip_llava, tiny_llava_dir, tmp_path):
    adapter, clip_dir, feats, cls, _ = clip_llava
    with pytest.raises(QAPrunerError, match="CDPruner's instruction relevance"):
        PruneConfig("cls", 0.25, relevance=f"clip:{clip_dir}")
    with pytest.raises(QAPrunerError, match="'llm' or 'clip:MODEL'"):
        PruneConfig("cdpruner", 0.25, relevance="clip:")
    pruner = Pruner(PruneConfig("cdpruner", 0.25, relevance=f"clip:{tmp_path / 'none'}"))
    with pytest.raises(QAPrunerError, match="Cannot load the CLIP model"):
        adapter.forward(feats, cls, QUESTIONS, QUESTIONS, pruner)
    from tiny_checkpoint import build_tiny_clip_llava

    _, other_clip = build_tiny_clip_llava(tmp_path / "other", seed=1)  # another CLIP: not this model's tower
    with pytest.raises(QAPrunerError, match="is not this model's vision tower"):
        adapter.forward(feats, cls, QUESTIONS, QUESTIONS, Pruner(PruneConfig("cdpruner", 0.25,
                                                                             relevance=f"clip:{other_clip}")))
    dino = load_model(str(tiny_llava_dir))  # a DINOv2 tower (the testbed's kind) has no CLIP text tower
    f2, c2 = dino.encode(dino.processor.image_processor([Image.new("RGB", (56, 56))], return_tensors="pt")["pixel_values"])
    with pytest.raises(QAPrunerError, match="needs a CLIP vision tower"):
        dino.forward(f2, c2, QUESTIONS[:1], QUESTIONS[:1], Pruner(PruneConfig("cdpruner", 0.25,
                                                                               relevance=f"clip:{clip_dir}")))


def test_generate_keeps_what_the_harness_keeps_with_clip_relevance(clip_llava):
    """model.generate with pruning enabled reads the question from the prompt (decoded for CLIP's tokenizer)
    and keeps exactly the harness's indices."""
    from qapruner.deploy.generate import enable_pruning

    adapter, clip_dir, feats, cls, _ = clip_llava
    adapter.tokenizer.padding_side = "left"
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)) for _ in QUESTIONS]
    enc = adapter.processor(images=images, text=[adapter.user_turn(q) for q in QUESTIONS], padding=True,
                            return_tensors="pt")
    cfg = PruneConfig("cdpruner", 0.25, relevance=f"clip:{clip_dir}")
    ref = adapter.forward(feats, cls, QUESTIONS, QUESTIONS, Pruner(cfg))
    with enable_pruning(adapter, cfg) as handle:
        adapter.model.generate(**enc, max_new_tokens=2, do_sample=False)
    assert handle.last_keep.tolist() == ref.keep.tolist()


def test_cli_eval_with_clip_relevance(clip_llava, tiny_jsonl, tmp_path):
    import json

    from qapruner.cli import main

    _, clip_dir, _, _, llava_dir = clip_llava
    out = tmp_path / "eval.json"
    args = ["eval", "--model", str(llava_dir), "--task", f"jsonl:{tiny_jsonl}", "--prune", "cdpruner", "--keep", "0.25"]
    assert main(args + ["--relevance", f"clip:{clip_dir}", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["prune"]["relevance"] == f"clip:{clip_dir}" and summary["visual_tokens"]["kept"] == 4
    assert main(args + ["--relevance", "clip", "--out", str(tmp_path / "bad.json")]) != 0  # one sentence, no trace
