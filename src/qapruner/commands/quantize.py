"""``qapruner quantize``: quantize a model with a preset and write a real low-bit checkpoint (compressed-tensors
format: packed int4/int8 weights + scales) that ``LlavaForConditionalGeneration.from_pretrained`` and vLLM load."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..errors import QAPrunerError
from .common import RELEVANCE_HELP, SENSITIVITY_HELP


def add_parser(sub) -> None:
    p = sub.add_parser("quantize", help="quantize a model and write a compressed-tensors checkpoint",
                       description=__doc__)
    p.add_argument("--model", default="testbed",
                   help="'testbed' (default), 'testbed:ASSET', a local llava-hf directory or a hub id")
    p.add_argument("--quant", required=True,
                   help="preset the export supports: w4a16[-gptq][-g64], w8a16, w8a8[-gptq][-smooth0.8][-syma], "
                        "with -rot/-rrot only together with --no-online-hadamard (docs/deploy.md)")
    p.add_argument("--no-online-hadamard", action="store_true",
                   help="with -rot/-rrot: fold the residual rotation into the weights but apply no online Hadamard "
                        "(a different model from the preset's; the only rotated form the format can hold)")
    p.add_argument("--calib-task", default="easy-vqa",
                   help="task whose train split (or items, for jsonl:PATH) calibrates GPTQ / SmoothQuant "
                        "(default easy-vqa)")
    p.add_argument("--calib-samples", type=int, default=32, help="calibration items (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration sample and of the random host")
    p.add_argument("--prune", default=None, metavar="HOST",
                   help="visual-token pruning host saved with the checkpoint (load_model restores it)")
    p.add_argument("--keep", type=float, default=None, help="ratio of visual tokens kept, in (0, 1]")
    p.add_argument("--qa", action="store_true", help="quantization-aware variant of the host (QAPruner)")
    p.add_argument("--alpha", default="0.7", help="weight of the host score in [0,1], or 'dynamic' (default 0.7)")
    p.add_argument("--sensitivity", default="paper", choices=["paper", "matched", "norm"],
                   help=SENSITIVITY_HELP)
    p.add_argument("--layer-k", type=int, default=2, help="LLM layer for in-LLM (fastv) pruning (default 2)")
    p.add_argument("--relevance", default="llm", metavar="llm|clip:MODEL", help=RELEVANCE_HELP)
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty, unless --force)")
    p.add_argument("--force", action="store_true", help="replace an earlier export in --out")
    p.set_defaults(func=run)


def quant_config(args):
    from ..quant import QuantConfig

    cfg = QuantConfig.from_preset(args.quant)
    if args.no_online_hadamard:
        if cfg.rotation is None:
            raise QAPrunerError("--no-online-hadamard only applies to a rotated preset (-rot or -rrot).")
        cfg = replace(cfg, online_hadamard=False)
    return cfg


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


def run(args) -> int:
    from ..deploy.export import export_compressed
    from ..deploy.outdir import check_out_dir
    from ..deploy.scheme import check_exportable
    from ..eval.prepare import quantized_copy
    from ..models.registry import check_model_spec, load_model
    from ..runinfo import progress_bar
    from ..tasks import load_task
    from ..tasks.registry import task_info

    cfg = quant_config(args)
    check_exportable(cfg)  # the cheap checks first: what is written, where, from what
    prune = prune_config(args)
    if args.calib_samples < 1:
        raise QAPrunerError("--calib-samples must be at least 1.")
    out = check_out_dir(args.out, args.force)
    check_model_spec(args.model)
    task = None
    if cfg.needs_calibration:
        task_info(args.calib_task)
        task = load_task(args.calib_task)
    adapter = load_model(args.model)
    if getattr(adapter.model, "_qapruner_quant", None) is not None:
        raise QAPrunerError(f"Model '{args.model}' is already a quantized export; quantize its original model.")
    if prune is not None and prune.host == "fastv" and not 0 <= prune.layer_k < adapter.num_layers:
        raise QAPrunerError(f"--layer-k {prune.layer_k} is outside the model's {adapter.num_layers} decoder layers "
                            f"(0..{adapter.num_layers - 1}).")
    with progress_bar() as progress:
        qadapter, info = quantized_copy(adapter, cfg, task, args.calib_samples, args.seed, progress=progress)
    calibration = {**info, "calib_task": args.calib_task if task is not None else None, "calib_split": info["calib_task"]}
    meta = export_compressed(qadapter.model, out, adapter.processor, prune=prune, source=args.model,
                             calibration=calibration, force=args.force)
    s = meta["sizes"]
    print(f"wrote {out}: {cfg.preset}{' (no online Hadamard)' if args.no_online_hadamard else ''}, "
          f"{s['decoder_linears']} decoder linears in {s['decoder_bytes'] / 2**20:.2f} MiB "
          f"= {s['ratio_to_fp16']:.3f} x their fp16 size ({s['decoder_fp16_bytes'] / 2**20:.2f} MiB); "
          f"safetensors {s['safetensors_bytes'] / 2**20:.2f} MiB"
          + (f"; pruning {prune.host}{'+QA' if prune.qa else ''} keep {prune.keep} saved" if prune else ""))
    return 0
