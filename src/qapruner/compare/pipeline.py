"""The whole ``compare`` pipeline: run the grid, then statistics, results.json, report.md/html and plots."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from ..io import write_json
from .archive import PARTIAL, pack, shares_of
from .config import CompareConfig
from .orchestrate import Backend, correctness, run_grid
from .report import build_results, write_reports


def environment_info() -> dict:
    from ..runinfo import environment

    return environment()


def run_compare(cfg: CompareConfig, backend: Backend | None = None, argv: list[str] | None = None, progress=None,
                log=print, env: dict | None = None) -> dict:
    out_dir = Path(cfg.out)
    backend = backend or Backend()
    argv = list(argv or [])
    start = time.perf_counter()
    grid = run_grid(cfg, backend, out_dir, progress, log)
    corr, kept = correctness(grid["configs"], grid["tasks"], out_dir / "items")
    results = build_results(cfg, grid, corr, env if env is not None else environment_info(), argv,
                            shlex.join(["qapruner", *argv]))
    # Wall time of this invocation only: a resumed run reuses finished configurations (counted apart).
    results["wall"] = {"seconds": round(time.perf_counter() - start, 1), "configs_computed": grid["computed"],
                       "configs_reused": len(grid["configs"]) - grid["computed"]}
    results["outputs"] = write_outputs(results, out_dir, kept)
    # items/ stays for resuming; the archive is what a committed report keeps (it shares what the old one shared)
    results["archive"] = pack(out_dir, results, shares_of(out_dir))
    write_json(out_dir / "results.json", results)
    (out_dir / PARTIAL).unlink(missing_ok=True)  # the run finished: the final archive holds everything
    return results


def write_outputs(results: dict, out_dir: Path, kept: dict, reuse_gallery: bool = False) -> dict:
    """Plots (PNG) and reports; returns {name: path relative to out_dir}. ``reuse_gallery``: list an existing
    gallery.png that cannot be redrawn because its kept indices are missing (a partly archived report)."""
    from . import plots as P

    out_dir = Path(out_dir)
    figs: dict[str, str] = {}
    for t in results["config"]["tasks"]:
        name = f"accuracy_{_file_slug(t)}.png"
        P.accuracy_vs_keep(results, t, out_dir / name)
        figs[f"{t}: accuracy vs keep ratio"] = name
    if results["comparisons"]:
        P.qa_minus_host(results, out_dir / "qa_minus_host.png")
        figs["QA − host differences"] = "qa_minus_host.png"
    if results.get("gallery") and (P.gallery(results, out_dir / "gallery", kept, out_dir / "gallery.png")
                                   or reuse_gallery and (out_dir / "gallery.png").is_file()):
        figs["Gallery: kept tokens (host, QA-host) and S^Q outliers"] = "gallery.png"
    md, html = write_reports(results, out_dir, figs)
    return {"plots": figs, "report_md": md.name, "report_html": html.name, "results": "results.json"}


def _file_slug(text: str) -> str:
    from .grid import slug

    return slug(text)
