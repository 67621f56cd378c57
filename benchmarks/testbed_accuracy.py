"""FP accuracy of a testbed asset with the image and on a blank image, per task and per question type, on the
seeded, answer-stratified subset `compare --limit N` uses (the items of docs/experiment-v2 at N = 300).

    python benchmarks/testbed_accuracy.py --model testbed:v3 --limit 300 [--tasks shapes,easy-vqa,fashion-mnist]
        [--blank-tasks shapes,easy-vqa]

Writes benchmarks/results/testbed_accuracy_<asset>_n<N>.json and prints a markdown table. The per-item files go
to runs/testbed_accuracy/ (a rerun resumes there).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from qapruner.cli import main as cli
from qapruner.eval.store import read_items

ROOT = Path(__file__).resolve().parent


def per_kind(items_file: Path) -> dict:
    right, total = defaultdict(int), defaultdict(int)
    for r in read_items(items_file):
        for k in ("all", r.get("kind")):
            if k:
                total[k] += 1
                right[k] += bool(r["correct"])
    return {k: {"n": total[k], "accuracy": right[k] / total[k]} for k in total}


def label(model: str) -> str:
    """A file-name label: ``testbed:v3`` -> ``testbed_v3``; ``testbed:/some/dir/testbed_v4.safetensors`` ->
    ``testbed_v4``."""
    asset = model.partition(":")[2]
    return Path(asset).stem if asset.endswith(".safetensors") else model.replace(":", "_").replace("/", "_")


def run(model: str, tasks: list[str], limit: int, blank_tasks: list[str]) -> dict:
    out_dir = Path("runs/testbed_accuracy")
    results = {}
    for task in tasks:
        for blank in (False, True) if task in blank_tasks else (False,):
            name = f"{label(model)}__{task}__n{limit}{'__blank' if blank else ''}"
            argv = ["eval", "--model", model, "--task", task, "--limit", str(limit),
                    "--out", str(out_dir / f"{name}.json")] + (["--blank-image"] if blank else [])
            if cli(argv) != 0:
                sys.exit(f"eval failed: {' '.join(argv)}")
            results[f"{task}{' blank' if blank else ''}"] = per_kind(out_dir / f"{name}.items.jsonl")
    return results


def table(results: dict, tasks: list[str]) -> str:
    lines = ["| task | type | n | with image % | blank image % |", "|---|---|---|---|---|"]
    for task in tasks:
        img, blank = results[task], results.get(f"{task} blank", {})
        for k in ["all"] + sorted(k for k in img if k != "all"):
            b = f"{100 * blank[k]['accuracy']:.1f}" if k in blank else "–"
            lines.append(f"| {task} | {k} | {img[k]['n']} | {100 * img[k]['accuracy']:.1f} | {b} |")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="testbed")
    ap.add_argument("--tasks", default="shapes,easy-vqa,fashion-mnist")
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--blank-tasks", default=None, help="tasks also run on a blank image (default: all)")
    a = ap.parse_args()
    tasks = a.tasks.split(",")
    res = run(a.model, tasks, a.limit, a.blank_tasks.split(",") if a.blank_tasks else tasks)
    path = ROOT / "results" / f"testbed_accuracy_{label(a.model)}_n{a.limit}.json"
    path.write_text(json.dumps({"model": a.model, "limit": a.limit, "seed": 0, "results": res}, indent=1) + "\n")
    print(table(res, tasks))
    print(f"written: {path}")
