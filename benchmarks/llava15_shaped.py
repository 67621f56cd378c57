"""The full-size llava-1.5-7B path on random weights: does it run, how long does quantization take, how much
GPU memory does it need?

Builds a llava-hf checkpoint with llava-1.5-7B's shapes and random weights: a CLIP ViT-L/14-336 tower (576
visual tokens, features of layer -2), a 2-layer GELU projector, and a Llama-7B decoder (32 × 4096, MLP 11008,
so the online Hadamard of width 11008 = 2 ⊗ 5504 runs). It uses the tests' word-level vocabulary, because no
tokenizer can be downloaded here. Then it runs `qapruner eval` on it: FP dense, and W4A4-rot-GPTQ with
QA-CDPruner at keep 12.5 %, on a small generated JSONL task. Accuracy means nothing on random weights; the
wall times and peak GPU memory are the result.

    python benchmarks/llava15_shaped.py --out /tmp/l15                      # full size (GPU: ~28 GB to build)
    python benchmarks/llava15_shaped.py --out /tmp/l15s --small --items 4   # shrunk decoder/tower: a CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_checkpoint import tiny_tokenizer, write_color_task  # noqa: E402

from qapruner.models.testbed import CHAT_TEMPLATE, IMAGE_TOKEN  # noqa: E402

def build(out: Path, small: bool, device: torch.device) -> Path:
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    torch.manual_seed(0)
    tok = tiny_tokenizer()
    vision = CLIPVisionConfig(hidden_size=64 if small else 1024, intermediate_size=128 if small else 4096,
                              num_hidden_layers=2 if small else 24, num_attention_heads=4 if small else 16,
                              image_size=336, patch_size=14, projection_dim=768)
    text = LlamaConfig(hidden_size=256 if small else 4096, intermediate_size=512 if small else 11008,
                       num_hidden_layers=2 if small else 32, num_attention_heads=4 if small else 32,
                       num_key_value_heads=4 if small else 32, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                       max_position_embeddings=4096, tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                         projector_hidden_act="gelu", vision_feature_select_strategy="default", vision_feature_layer=-2,
                         image_seq_length=576, tie_word_embeddings=False)
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).eval()
    model.to(torch.float16 if device.type == "cuda" else torch.float32)
    ip = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    processor = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                               chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
    model.save_pretrained(out / "model")
    processor.save_pretrained(out / "model")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out / "model"


def run(argv: list[str]) -> dict:
    from qapruner.cli import main

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    rc = main(argv)
    row = {"argv": " ".join(argv), "rc": rc, "wall_s": round(time.perf_counter() - t0, 1)}
    if torch.cuda.is_available():
        row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--items", type=int, default=12)
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--small", action="store_true", help="shrunk decoder and tower (same 576 visual tokens)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    model = build(out, args.small, device)
    built = {"build_and_save_s": round(time.perf_counter() - t0, 1), "device": str(device),
             "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None}
    print(json.dumps(built), flush=True)
    base = ["eval", "--model", str(model), "--task", f"jsonl:{write_color_task(out, args.items, 336, 120, 200)}", "--limit", str(args.items)]
    rows = [run([*base, "--out", str(out / "fp.json")]),
            run([*base, "--quant", "w4a4-rot-gptq", "--calib-samples", str(args.calib_samples), "--prune", "cdpruner",
                 "--keep", "0.125", "--qa", "--out", str(out / "w4a4.json")])]
    for row, name in zip(rows, ("fp", "w4a4")):
        if (out / f"{name}.json").exists():
            s = json.loads((out / f"{name}.json").read_text())
            row.update(n=s["n"], visual_tokens=s["visual_tokens"], timing=s.get("timing"))
    result = {**built, "torch": torch.__version__, "small": args.small, "rows": rows}
    (out / "llava15_shaped.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
