"""``qapruner eval``: accuracy of one configuration (quantization preset × pruning) on one task."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .. import parallel
from ..errors import QAPrunerError
from .common import GEMM_HELP, RELEVANCE_HELP, SENSITIVITY_HELP, add_model_task_args, check_writable


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate one configuration on a task")
    add_model_task_args(p)
    p.add_argument("--quant", default=None, help="quantization preset, e.g. w4a4, w4a4-rot-gptq (default: FP)")
    p.add_argument("--prune", default=None, metavar="HOST",
                   help="visual-token pruning host: random | uniform | cls | fastv | divprune | cdpruner")
    p.add_argument("--keep", type=float, default=None, help="ratio of visual tokens kept, in (0, 1]")
    p.add_argument("--qa", action="store_true", help="quantization-aware variant of the host (QAPruner)")
    p.add_argument("--alpha", default="0.7", help="weight of the host score in [0,1], or 'dynamic' (default 0.7)")
    p.add_argument("--sensitivity", default="paper", choices=["paper", "matched", "norm"],
                   help=SENSITIVITY_HELP)
    p.add_argument("--layer-k", type=int, default=2, help="LLM layer for in-LLM (fastv) pruning (default 2)")
    p.add_argument("--relevance", default="llm", metavar="llm|clip:MODEL", help=RELEVANCE_HELP)
    p.add_argument("--calib-pruned", action="store_true",
                   help="calibrate GPTQ / static scales on the token sets the pruner keeps (the same host, keep and QA "
                        "setting), not on all visual tokens (prune-aware calibration)")
    p.add_argument("--mode", default="choice", choices=["choice", "generate"],
                   help="choice: next-token likelihood over candidate answers; generate: greedy decode + parse")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="execution dtype of the projector and language model (bfloat16: FP / weight-only presets)")
    p.add_argument("--gemm", default="float", choices=["float", "integer"], help=GEMM_HELP)
    p.add_argument("--real", action="store_true",
                   help="real kernels instead of fake-quant: int4 weights (W4A16), int8 dynamic (W8A8), bf16 otherwise")
    p.add_argument("--blank-image", action="store_true",
                   help="replace every image by a blank one (measures how much answers depend on the image)")
    p.add_argument("--out", default=None, help="summary JSON (per-item predictions go to OUT.items.jsonl)")
    parallel.add_args(p)
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
                       sensitivity=args.sensitivity, layer_k=args.layer_k, relevance=args.relevance, seed=args.seed)


def eval_config(args):
    """The whole configuration, validated before anything is loaded, computed or written."""
    from ..eval.config import EvalConfig

    return EvalConfig(model=args.model, task=args.task, limit=args.limit, seed=args.seed,
                      blank_image=args.blank_image, quant=args.quant, calib_samples=args.calib_samples,
                      calib_seed=args.calib_seed,
                      prune=prune_config(args), mode=args.mode, batch_size=args.batch_size, dtype=args.dtype, gemm=args.gemm,
                      real=args.real, calib_pruned=args.calib_pruned)


def run(args) -> int:
    from ..eval.runner import Evaluator
    from ..eval.store import check_config, is_complete
    from ..io import write_json
    from ..models.registry import check_model_spec, load_model
    from ..runinfo import config_hash, environment
    from ..tasks import load_task

    cfg = eval_config(args)
    out = Path(args.out) if args.out else Path("runs") / f"eval-{config_hash(cfg.key())}.json"
    check_writable(out)  # the cheap checks first: where results go, whether they resume, whether the model exists
    check_config(out.with_suffix(".items.jsonl"), cfg.key())
    check_model_spec(cfg.model)
    task = load_task(cfg.task).subset(cfg.limit, cfg.seed)
    if cfg.blank_image:
        task = task.blank()
    with parallel.main_first():  # several processes: the main one downloads / converts first
        adapter = load_model(cfg.model, compressed=cfg.real)  # --real builds its kernels from the packed integers
    cfg.check_model(adapter)
    finished = is_complete(out.with_suffix(".items.jsonl"), cfg.key(), [it.uid for it in task.items])
    with parallel.progress_bar() as progress:
        if finished:  # every item is stored: summarize again without quantizing, keep the earlier record
            quant_info = _earlier_quant_info(out, cfg)
        else:
            adapter, quant_info = _prepare(adapter, cfg, task, progress)
        summary = Evaluator(adapter).run(task, cfg, out.with_suffix(".items.jsonl"), progress)
    if not parallel.is_main():
        return 0  # the main process writes the summary
    summary.update({"image": task.meta.get("image", "task images"), "seed": cfg.seed, "config": cfg.describe(),
                    "quant_info": quant_info, "environment": environment()})
    stored = getattr(adapter.model, "_qapruner_quant", None)
    if cfg.quant is None and stored is not None:  # a `qapruner quantize` export: the preset it was written with
        summary["checkpoint_quant"] = stored.preset
    write_json(out, summary)
    table = Table(title=f"{summary['task']} · {summary['model']}")
    for col in ("n", "accuracy", "95% CI", "quant", "prune", "visual tokens", "items/s"):
        table.add_column(col)
    p = summary["prune"]
    table.add_row(str(summary["n"]), f"{summary['accuracy']:.4f}",
                  f"[{summary['ci95'][0]:.4f}, {summary['ci95'][1]:.4f}]",
                  str(summary["quant"] or (f"{summary['checkpoint_quant']} (checkpoint)" if "checkpoint_quant" in summary
                                           else "FP")),
                  f"{p['host']}{'+QA' if p['qa'] else ''} keep {p['keep']}" if p else "none",
                  f"{summary['visual_tokens']['kept']}/{summary['visual_tokens']['before']}",
                  str(summary["items_per_second"]))
    Console().print(table)
    print(f"wrote {out}")
    return 0


def _prepare(adapter, cfg, task, progress):
    """The model a configuration evaluates: quantized (calibrated on ``task``'s training split), on real
    kernels, or cast; and the quantization record for the summary."""
    quant_info = None
    if cfg.quant is not None:
        adapter, quant_info = parallel.quantized_copy(adapter, cfg.quant, task, cfg.calib_samples,
                                                      cfg.calibration_seed, progress=progress,
                                                      calib_prune=cfg.prune if cfg.calib_pruned else None)
    if cfg.gemm == "integer":
        from ..quant.integer_gemm import use_integer_gemm

        quant_info = dict(quant_info or {}, integer_gemm_layers=use_integer_gemm(adapter.model))
    if cfg.real:
        from ..deploy.runtime import realize

        quant_info = dict(quant_info or {}, kernels=realize(adapter))
    elif cfg.dtype != "float32":
        import torch

        adapter = adapter.cast(getattr(torch, cfg.dtype))
    return adapter, quant_info


def _earlier_quant_info(out: Path, cfg) -> dict | None:
    """The quantization record of the summary an earlier run of ``cfg`` wrote to ``out``, if any."""
    if cfg.quant is None and not cfg.real:
        return None
    try:
        earlier = json.loads(out.read_text())
    except (OSError, ValueError):
        earlier = {}
    if isinstance(earlier, dict) and earlier.get("config") == json.loads(json.dumps(cfg.describe())) and earlier.get("quant_info"):
        return earlier["quant_info"]
    return {"preset": cfg.preset, "note": "not quantized again: every item was already stored"}
