"""``qapruner eval``: accuracy of one configuration (quantization preset × pruning) on one task."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..errors import QAPrunerError
from .common import add_model_task_args, check_limit, write_json


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate one configuration on a task")
    add_model_task_args(p)
    p.add_argument("--quant", default=None, help="quantization preset, e.g. w4a4, w4a4-rot-gptq (default: FP)")
    p.add_argument("--prune", default=None, metavar="HOST",
                   help="visual-token pruning host: random | uniform | cls | fastv | divprune | cdpruner")
    p.add_argument("--keep", type=float, default=None, help="ratio of visual tokens kept, in (0, 1]")
    p.add_argument("--qa", action="store_true", help="quantization-aware variant of the host (QAPruner)")
    p.add_argument("--alpha", default="0.7", help="weight of the host score in [0,1], or 'dynamic' (default 0.7)")
    p.add_argument("--sensitivity", default="paper", choices=["paper", "matched"],
                   help="paper: simulated INT4/G128 error; matched: the deployed quantizer's error")
    p.add_argument("--layer-k", type=int, default=2, help="LLM layer for in-LLM (fastv) pruning (default 2)")
    p.add_argument("--mode", default="choice", choices=["choice", "generate"],
                   help="choice: next-token likelihood over candidate answers; generate: greedy decode + parse")
    p.add_argument("--blank-image", action="store_true",
                   help="replace every image by a blank one (measures how much answers depend on the image)")
    p.add_argument("--out", default=None, help="summary JSON (per-item predictions go to OUT.items.jsonl)")
    p.set_defaults(func=run)


def prune_config(args):
    from ..prune import PruneConfig

    if args.prune is None:
        if args.keep is not None or args.qa:
            raise QAPrunerError("--keep and --qa need a pruning host: add --prune HOST.")
        return None
    if args.keep is None:
        raise QAPrunerError("--prune needs --keep RATIO (the share of visual tokens kept, in (0, 1]).")
    return PruneConfig(host=args.prune, keep=args.keep, qa=args.qa, alpha=args.alpha,
                       sensitivity=args.sensitivity, layer_k=args.layer_k, seed=args.seed)


def run(args) -> int:
    from ..eval.prepare import quantized_copy
    from ..eval.runner import EvalConfig, Evaluator, config_hash, environment, progress_bar
    from ..models.registry import load_model
    from ..tasks import load_task

    check_limit(args.limit)
    prune = prune_config(args)
    if args.quant:
        from ..quant import QuantConfig

        QuantConfig.from_preset(args.quant)  # fail on a bad preset before loading anything
    task = load_task(args.task).subset(args.limit, args.seed)
    if args.blank_image:
        task = task.blank()
    cfg = EvalConfig(quant=args.quant, prune=prune, mode=args.mode, batch_size=args.batch_size)
    out = Path(args.out) if args.out else Path("runs") / f"eval-{config_hash([args.model, args.task, args.limit, args.seed, args.blank_image, cfg.describe()])}.json"
    loaded = load_model(args.model)
    quant_info = None
    with progress_bar() as progress:
        if args.quant:
            loaded, quant_info = quantized_copy(loaded, args.quant, task, args.calib_samples, args.seed,
                                                  progress=progress)
        summary = Evaluator(loaded, args.quant).run(task, cfg, out.with_suffix(".items.jsonl"), progress)
    summary.update({"image": task.meta.get("image", "task images"), "seed": args.seed, "quant_info": quant_info, "environment": environment()})
    write_json(out, summary)
    table = Table(title=f"{summary['task']} · {summary['model']}")
    for col in ("n", "accuracy", "95% CI", "quant", "prune", "visual tokens", "items/s"):
        table.add_column(col)
    p = summary["prune"]
    table.add_row(str(summary["n"]), f"{summary['accuracy']:.4f}",
                  f"[{summary['ci95'][0]:.4f}, {summary['ci95'][1]:.4f}]", str(summary["quant"] or "FP"),
                  f"{p['host']}{'+QA' if p['qa'] else ''} keep {p['keep']}" if p else "none",
                  f"{summary['visual_tokens']['kept']}/{summary['visual_tokens']['before']}",
                  str(summary["items_per_second"]))
    Console().print(table)
    print(f"wrote {out}")
    return 0
