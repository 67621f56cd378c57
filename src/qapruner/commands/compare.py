"""``qapruner compare``: FP dense, Wq dense, FP + host, Wq + host and Wq + QA-host on the same items, with
paired statistics, a Table-1-shaped report, plots and a kept-token gallery (docs/compare.md)."""

from __future__ import annotations

import sys
from pathlib import Path

from .. import parallel
from .common import GEMM_HELP, RELEVANCE_HELP, SENSITIVITY_HELP, add_model_task_args


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="the paper's experiment: a grid of quantization × pruning configurations",
                       description=__doc__)
    p.add_argument("--config", default=None, metavar="FILE",
                   help="recipe (TOML or JSON) holding any of these options; options given here override it")
    add_model_task_args(p)
    p._option_string_actions["--task"].help = "one task (alias of --tasks with one entry)"
    p.add_argument("--tasks", default=None, help="comma list of tasks (default easy-vqa,fashion-mnist)")
    p.add_argument("--quant", default=None,
                   help="quantization preset, or a comma list to sweep several (bits × keep grid); default w4a4")
    p.add_argument("--hosts", default=None, help="comma list of pruning hosts (default: all six)")
    p.add_argument("--keeps", default=None, help="comma list of keep ratios (default 0.5,0.25,0.125)")
    p.add_argument("--alpha", default=None, help="weight of the host score in [0,1], or 'dynamic' (default 0.7)")
    p.add_argument("--sensitivity", default=None,
                   help=SENSITIVITY_HELP + "; a comma list sweeps several (one QA row per choice)")
    p.add_argument("--mode", default=None, choices=["choice", "generate"],
                   help="choice (default): likelihood of candidate answers; generate: greedy decode + parse")
    p.add_argument("--layer-k", type=int, default=None, help="LLM layer for FastV pruning (default 2)")
    p.add_argument("--relevance", default=None, metavar="llm|clip:MODEL", help=RELEVANCE_HELP)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="execution dtype of the projector and LLM (bfloat16: FP / weight-only presets only)")
    p.add_argument("--gemm", default=None, choices=["float", "integer"], help=GEMM_HELP)
    p.add_argument("--no-fp-pruned", dest="fp_pruned", action="store_const", const=False, default=None,
                   help="skip the FP + host reference rows")
    p.add_argument("--no-blank", dest="blank", action="store_const", const=False, default=None,
                   help="skip the blind baseline (FP dense on a blank image) and the image-dependence section")
    p.add_argument("--prune-calibration", dest="prune_calibration", action="store_const", const=True, default=None,
                   help="add rows whose quantized model is calibrated on each row's pruned token sets (GPTQ / static "
                        "scales; one calibration per host, keep and QA setting; not fastv or matched S^Q)")
    p.add_argument("--gallery", type=int, default=None, help="images in the kept-token gallery (default 4; 0: none)")
    p.add_argument("--bootstrap-reps", type=int, default=None, help="paired bootstrap resamples (default 10000)")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (default runs/compare)")
    p.add_argument("--from-archive", default=None, metavar="DIR",
                   help="no model: recompute the statistics of report DIR from its results.json and items.tar.xz "
                        "and rewrite its results.json, reports and plots")
    parallel.add_args(p)
    # None = "not given", so a --config recipe can supply the value
    p.set_defaults(func=run, model=None, task=None, seed=None, batch_size=None, calib_samples=None)


CLI_KEYS = ("model", "tasks", "quant", "dtype", "gemm", "hosts", "keeps", "alpha", "sensitivity", "mode", "layer_k", "relevance", "fp_pruned",
            "blank", "prune_calibration", "gallery", "bootstrap_reps", "out", "limit", "seed", "batch_size", "calib_samples",
            "calib_seed")


def config_from_args(args):
    from ..compare.config import DEMO, load_config_file, resolve
    from ..errors import QAPrunerError

    file_values = load_config_file(args.config) if args.config else dict(DEMO)
    cli = {k: getattr(args, k, None) for k in CLI_KEYS}
    if args.task is not None:
        if args.tasks is not None:
            raise QAPrunerError("Give either --task or --tasks, not both.")
        cli["tasks"] = args.task
    return resolve(file_values, cli)


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..compare.report import table1

    console = Console()
    if args.from_archive is not None:
        from ..compare.regenerate import regenerate
        from ..errors import QAPrunerError

        if args.config or args.task is not None or any(getattr(args, k, None) is not None for k in CLI_KEYS):
            raise QAPrunerError("--from-archive takes the report directory only; its options are in its results.json.")
        results = regenerate(args.from_archive, log=console.print)
        out = args.from_archive
    else:
        from ..compare.pipeline import run_compare
        from ..runinfo import progress_bar
        from .common import check_writable

        cfg = config_from_args(args)
        if not parallel.is_main():  # the other processes take their share of each configuration's items
            from ..compare.orchestrate import Backend, run_grid

            check_writable(Path(cfg.out) / "results.json")
            run_grid(cfg, Backend(), Path(cfg.out), parallel.progress_bar(), log=lambda *a, **k: None)
            return 0
        if not args.config and args.limit is None:
            console.print("No --config: the demo's grid (configs/demo.toml, ~9 min on 2 CPU cores). The full test sets: "
                          "qapruner compare --config configs/experiment_full.toml (many hours on 2 CPU cores).")
        check_writable(Path(cfg.out) / "results.json")
        with progress_bar() as progress:
            results = run_compare(cfg, argv=sys.argv[1:], progress=progress, log=progress.console.print)
        out = cfg.out
    header, rows = table1(results)
    table = Table(title=f"accuracy (%) at keep {results['paper_keep']:g} · {results['config']['model']}")
    for h in header:
        table.add_column(h)
    for r in rows:
        table.add_row(*r)
    console.print(table)
    sig = sum(c["significant"] for c in results["comparisons"])
    console.print(f"{sig} of {len(results['comparisons'])} QA − host differences significant at p < 0.05 (exact McNemar)")
    console.print(f"wrote {out}/results.json, report.md, report.html and {len(results['outputs']['plots'])} PNGs")
    return 0
