"""``qapruner generate``: answer one prompt about one image (greedy), optionally with visual-token pruning inside
``model.generate`` (``qapruner.deploy.generate``) and a quantized language model."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..errors import QAPrunerError
from .common import RELEVANCE_HELP, SENSITIVITY_HELP


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="answer a prompt about an image (greedy), optionally pruned and quantized",
                       description=__doc__)
    p.add_argument("--model", default="testbed",
                   help="'testbed' (default), 'testbed:ASSET', a local llava-hf directory or a hub id")
    p.add_argument("--image", required=True, help="image file (any format PIL reads)")
    p.add_argument("--prompt", required=True, help="the user's text; the image comes first, as in LLaVA")
    p.add_argument("--prune", default=None, metavar="HOST",
                   help="visual-token pruning host: random | uniform | cls | fastv | divprune | cdpruner (default: "
                        "none, or the pruning an exported model was saved with; --keep 1 keeps every token)")
    p.add_argument("--keep", type=float, default=None, help="ratio of visual tokens kept, in (0, 1]")
    p.add_argument("--qa", action="store_true", help="quantization-aware variant of the host (QAPruner)")
    p.add_argument("--alpha", default="0.7", help="weight of the host score in [0,1], or 'dynamic' (default 0.7)")
    p.add_argument("--sensitivity", default="paper", choices=["paper", "matched", "norm"],
                   help=SENSITIVITY_HELP)
    p.add_argument("--layer-k", type=int, default=2, help="LLM layer for in-LLM (fastv) pruning (default 2)")
    p.add_argument("--relevance", default="llm", metavar="llm|clip:MODEL", help=RELEVANCE_HELP)
    p.add_argument("--seed", type=int, default=0, help="seed of the random host and of the calibration sample")
    p.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit in tokens (default 32)")
    p.add_argument("--quant", default=None, help="quantization preset, e.g. w4a8, w4a4-rot-gptq (default: FP)")
    p.add_argument("--calib-task", default="easy-vqa",
                   help="task whose training split (or items) calibrates presets that need it (default easy-vqa)")
    p.add_argument("--calib-samples", type=int, default=32, help="calibration items for GPTQ / static scales")
    p.add_argument("--real", action="store_true",
                   help="real CPU kernels (bf16; int4 weights for W4A16, int8 for W8A8, also for an exported DIR) "
                        "instead of fake-quant float32")
    p.add_argument("--verbose", action="store_true", help="report kept tokens and timings on stderr")
    p.set_defaults(func=run)


def _open_image(path: str):
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise QAPrunerError(f"Image '{path}' does not exist or is not a file.")
    try:
        with Image.open(p) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise QAPrunerError(f"Cannot read image '{path}': {str(exc).splitlines()[0]}") from None


def run(args) -> int:
    import contextlib

    import torch

    from ..models.registry import check_model_spec, load_model
    from ..prune import PruneConfig
    from .eval import prune_config

    # the cheap checks first, before anything is loaded
    if args.max_new_tokens < 1:
        raise QAPrunerError(f"--max-new-tokens must be a positive number of tokens, got {args.max_new_tokens}.")
    if not args.prompt.strip():
        raise QAPrunerError("--prompt is empty.")
    if args.calib_samples < 1:
        raise QAPrunerError(f"--calib-samples must be positive, got {args.calib_samples}.")
    cfg = prune_config(args)
    qcfg = None
    if args.quant is not None:
        from ..quant import QuantConfig

        qcfg = QuantConfig.from_preset(args.quant)
        if qcfg.needs_calibration:
            from ..tasks.registry import task_info

            task_info(args.calib_task)  # an unknown task fails here, before the model is loaded
    if args.real:
        from ..deploy.runtime import check_real

        check_real(qcfg, args.quant)
    check_model_spec(args.model)
    image = _open_image(args.image)

    adapter = load_model(args.model, compressed=args.real)  # --real builds its kernels from the packed integers
    if qcfg is not None:
        from ..eval.prepare import quantized_copy
        from ..tasks import load_task

        task = load_task(args.calib_task) if qcfg.needs_calibration else None
        adapter, _ = quantized_copy(adapter, qcfg, task, args.calib_samples, args.seed)
    if args.real:
        from ..deploy.runtime import realize

        kernels = realize(adapter)
        if args.verbose:
            print(f"real kernels: {kernels}", file=sys.stderr)
    if cfg is None and isinstance(getattr(adapter, "prune_config", None), PruneConfig):
        cfg = adapter.prune_config  # a `qapruner quantize` export saved its pruning choice; --prune overrides it
    tok = adapter.tokenizer
    enc = adapter.processor(images=[image], text=[adapter.user_turn(args.prompt)], return_tensors="pt")
    enc = enc.to(adapter.device)
    if "pixel_values" in enc:
        enc["pixel_values"] = enc["pixel_values"].to(next(adapter.model.parameters()).dtype)

    from ..deploy.generate import prune_generation

    pruning = prune_generation(adapter, cfg) if cfg is not None else contextlib.nullcontext()
    t0 = time.perf_counter()
    with pruning as handle, torch.no_grad():
        out = adapter.model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    seconds = time.perf_counter() - t0
    new = out[0, enc["input_ids"].shape[1]:]
    print(tok.decode(new, skip_special_tokens=True).strip())
    if args.verbose:
        n = adapter.n_visual
        kept = handle.last_keep.shape[1] if handle is not None and handle.last_keep is not None else n
        how = f"{cfg.host}{'+QA' if cfg.qa else ''} keep {cfg.keep:g}" if cfg is not None else "no pruning"
        print(f"{how}: visual tokens kept {kept}/{n}; {len(new)} new tokens in {seconds:.2f} s", file=sys.stderr)
    return 0
