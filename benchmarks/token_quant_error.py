"""How badly do a testbed asset's visual tokens quantize inside the language model? Per-token INT4 error at every
decoder linear's input, visual vs text tokens.

    python benchmarks/token_quant_error.py --assets v2,v7 [--images 32]     # ~1 min on 2 cores

Why: on the same items W4A4 (rotation + GPTQ) costs v2 far more than v7 (docs/experiment-v7 against
docs/experiment-v2: Fashion-MNIST 76.0 -> 56.7 on v2, 75.3 -> 68.7 on v7). QAPruner's premise is that some
visual tokens are activation outliers that a low-bit model depends on. This measures, on the FP model, the
input of each decoder linear (q/k/v, o, gate/up, down) for the first ``--images`` Fashion-MNIST and shapes test
images (each with its task's question): the relative error of a per-token asymmetric INT4 quantize-dequantize
(W4A4's activation grid, without the rotation) ||x - Q(x)|| / ||x||, and the token's absmax / RMS (how
outlier-like its channels are; also its 99th percentile over tokens). Averages over layers and tokens, visual
and text separately. Writes
benchmarks/results/token_quant_error.json.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from qapruner.models.assets import ASSETS
from qapruner.models.features import FeatureCache
from qapruner.models.registry import load_testbed_adapter
from qapruner.quant.quantizer import fake_quant_minmax
from qapruner.tasks import load_task

OUT = Path(__file__).resolve().parent / "results" / "token_quant_error.json"
LINEARS = ("q_proj", "o_proj", "gate_proj", "down_proj")  # k/v/up see the same input as q/gate


def measure(asset: str, task_name: str, n: int) -> dict:
    adapter = load_testbed_adapter(projector=ASSETS.get(asset, Path(asset)))
    task = load_task(task_name, "test")
    items = task.items[:n]
    feats = FeatureCache(adapter, task).get([it.image for it in items])[0]
    stats = defaultdict(list)
    inputs = adapter.assemble([it.prompt for it in items], adapter.project(feats))
    visual = torch.zeros(inputs.mask.shape, dtype=torch.bool)
    visual.scatter_(1, inputs.visual_positions.cpu(), True)
    real = inputs.mask.bool().cpu()

    def hook(module, args, name):
        x = args[0].detach().float()
        rel = (x - fake_quant_minmax(x, 4, False)).norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)
        peak = x.abs().amax(-1) / x.pow(2).mean(-1).sqrt().clamp_min(1e-12)
        for part, sel in (("visual", visual & real), ("text", ~visual & real)):
            stats[f"{part}_rel_err_{name}"].append(rel[sel].mean().item())
            stats[f"{part}_peak_{name}"].append(peak[sel].mean().item())
            stats[f"{part}_peak_p99_{name}"].append(peak[sel].quantile(0.99).item())

    handles = [m.register_forward_hook(lambda mod, a, out, nm=name.rsplit(".", 1)[-1]: hook(mod, a, nm))
               for name, m in adapter.parts.lm.named_modules() if name.rsplit(".", 1)[-1] in LINEARS]
    with torch.inference_mode():
        adapter.hidden_states(inputs.embeds, inputs.mask, inputs.position_ids)
    for h in handles:
        h.remove()
    return {k: sum(v) / len(v) for k, v in sorted(stats.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", default="v2,v7")
    ap.add_argument("--images", type=int, default=32)
    args = ap.parse_args()
    torch.manual_seed(0)
    result = {"images_per_task": args.images, "grid": "per-token asymmetric INT4, no rotation", "assets": {}}
    for asset in args.assets.split(","):
        result["assets"][asset] = {t: measure(asset, t, args.images) for t in ("fashion-mnist", "shapes")}
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    for asset, tasks in result["assets"].items():
        for t, s in tasks.items():
            for part in ("visual", "text"):
                print(f"{asset} {t:13s} {part:6s}", " ".join(f"{k[len(part) + 1:]}={v:.3f}" for k, v in s.items()
                                                            if k.startswith(part)))


if __name__ == "__main__":
    main()
