"""Which shapes patches does QAPruner's S^Q rank high: object or background? Per testbed asset, no LLM run.

    python benchmarks/shapes_token_sensitivity.py [--assets v2,v7] [--scenes 100]    # ~1 min on 2 cores

For the first ``--scenes`` images of the shapes test items (the reports' subset order), the asset's projected
visual tokens are scored with the paper's S^Q (1/2 minmax E + 1/2 minmax R per image, INT4 / G128) and its
parts E (simulated INT4 error), R (channel span) and the L2 norm; each is averaged over the patches whose
centre lies inside an object's box and over the background patches. Writes
benchmarks/results/shapes_token_sensitivity.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from qapruner.models.assets import ASSETS
from qapruner.models.features import FeatureCache
from qapruner.models.registry import load_testbed_adapter
from qapruner.prune.sensitivity import activation_span, quant_error, token_sensitivity
from qapruner.tasks import load_task
from qapruner.tasks.scenes import patch_labels
from qapruner.tasks.shapes import scenes

OUT = Path(__file__).resolve().parent / "results" / "shapes_token_sensitivity.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", default="v2,v7")
    ap.add_argument("--scenes", type=int, default=100)
    args = ap.parse_args()
    task = load_task("shapes", "test")
    idx = list(dict.fromkeys(it.image for it in task.items))[: args.scenes]
    on_object = torch.from_numpy(patch_labels([scenes("test")[i] for i in idx], inner=1.0)) > 0
    result = {"scenes": len(idx), "assets": {}}
    for asset in args.assets.split(","):
        adapter = load_testbed_adapter(projector=ASSETS.get(asset, Path(asset)))
        with torch.inference_mode():
            v = adapter.project(FeatureCache(adapter, task).get(idx)[0])
        scores = {"S^Q": token_sensitivity(v), "E": quant_error(v), "R": activation_span(v), "norm": v.norm(dim=-1)}
        result["assets"][asset] = {name: {"object": float(s[on_object].mean()),
                                          "background": float(s[~on_object].mean())} for name, s in scores.items()}
        print(asset, "  ".join(f"{k} object {d['object']:.3f} background {d['background']:.3f}"
                               for k, d in result["assets"][asset].items()))
    OUT.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
