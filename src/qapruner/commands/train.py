"""``qapruner train``: reproduce the testbed's committed projector."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import QAPrunerError


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train the testbed projector (reproduces the committed weights)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the committed recipe)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--align-steps", type=int, default=None,
                   help="stage-1 alignment steps without the LLM (default: the recipe's; 0 skips stage 1)")
    p.add_argument("--out", default=None, help="where to write the projector safetensors")
    p.add_argument("--recipe", default=None, metavar="NAME|FILE.json",
                   help="train with the recipe of a committed asset (v1, v2, v7) or of an asset's .json "
                        "(default: v2's recipe; the default asset v7 continues v2 through v5 and v6: `make train`)")
    p.add_argument("--init", default=None, metavar="NAME|FILE",
                   help="warm start from this asset (default: the recipe's; '' trains from scratch)")
    p.add_argument("--bf16", dest="bf16", action="store_const", const=True, default=None,
                   help="bf16 autocast (fast on CPUs with AVX-512 BF16 / AMX and on GPUs; default: the recipe's)")
    p.add_argument("--no-bf16", dest="bf16", action="store_const", const=False, help="train in fp32")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train import TrainConfig, train_projector

    cfg = TrainConfig()
    if args.recipe:
        from ..models.assets import ASSETS

        path = ASSETS[args.recipe].with_suffix(".json") if args.recipe in ASSETS else Path(args.recipe)
        if not path.is_file():
            raise QAPrunerError(f"Recipe '{args.recipe}' is neither a committed asset ({', '.join(ASSETS)}) nor a "
                                "JSON file.")
        cfg = TrainConfig.from_recipe(path)
    for field in ("steps", "batch_size", "lr", "seed", "out", "init"):
        value = getattr(args, field)
        if value is not None:
            setattr(cfg, field, value)
    if args.align_steps is not None:
        if args.align_steps < 0:
            raise QAPrunerError("--align-steps must be >= 0.")
        cfg.align.steps = args.align_steps
    if cfg.steps <= 0 or cfg.batch_size <= 0:
        raise QAPrunerError("--steps and --batch-size must be positive.")
    if args.bf16 is not None:
        cfg.bf16 = args.bf16
    summary = train_projector(cfg)
    print(json.dumps({k: summary[k] for k in ("seconds", "final_loss_avg20")}))
    return 0
