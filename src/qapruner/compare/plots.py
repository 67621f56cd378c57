"""PNG figures (matplotlib, Agg): accuracy vs keep ratio per task, QA − host differences, kept-token gallery."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from .config import swept_sensitivities  # noqa: E402
from .grid import qa_name  # noqa: E402

HOST_COLOR, QA_COLOR, FP_COLOR = "#1f77b4", "#d62728", "#555555"
QA_COLORS = {"paper": QA_COLOR, "matched": "#ff7f0e", "norm": "#9467bd"}  # one per sensitivity swept
QUANT_STYLES = ["-", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]


def _acc(c) -> float:
    return 100.0 * c["accuracy"]


def accuracy_vs_keep(results: dict, task: str, path: Path) -> Path:
    """One panel per host: Wq + host and Wq + QA-host vs keep ratio (one line style per preset), FP + host
    dashed, FP dense, FP on a blank image and Wq dense as horizontal references."""
    cfgs = [c for c in results["configs"] if c["task"] == task]
    hosts = results["config"]["hosts"]
    quants = results["config"]["quant"]
    keeps = sorted(results["config"]["keeps"])
    ncol = min(3, len(hosts))
    nrow = int(np.ceil(len(hosts) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.6 * nrow), squeeze=False, sharey=True)

    def pick(kind, quant=None, host=None, sensitivity=None):
        sel = [c for c in cfgs if c["kind"] == kind and c["quant"] == quant and c["host"] == host
               and (sensitivity is None or c.get("sensitivity", "paper") == sensitivity)]
        return sorted(sel, key=lambda c: c["keep"] or 1.0)

    lines = [("q-host", None, HOST_COLOR, "host", "o")] + \
            [("q-qa", x, QA_COLORS[x], qa_name(x) + "host", "D") for x in swept_sensitivities(results["config"])]

    fp_dense, blank = pick("fp-dense"), pick("fp-blank")
    for ax, host in zip(axes.flat, hosts):
        if fp_dense:
            ax.axhline(_acc(fp_dense[0]), color="black", lw=1, ls=":", label="FP dense")
        if blank:
            ax.axhline(_acc(blank[0]), color="#999999", lw=1.5, ls="-.", label="FP, blank image (text only)")
        fp_host = pick("fp-host", None, host)
        if fp_host:
            ax.plot([c["keep"] for c in fp_host], [_acc(c) for c in fp_host], color=FP_COLOR, ls="--", marker="^",
                    ms=4, label="FP + host")
        for qi, q in enumerate(quants):
            style = QUANT_STYLES[qi % len(QUANT_STYLES)]
            dense = pick("q-dense", q)
            if dense:
                ax.axhline(_acc(dense[0]), color="#2ca02c", lw=1, ls=(0, (1, 2 + qi)), label=f"{q.upper()} dense")
            for kind, sens, color, name, marker in lines:
                sel = pick(kind, q, host, sens)
                if not sel:
                    continue
                x = np.array([c["keep"] for c in sel])
                y = np.array([_acc(c) for c in sel])
                lo = np.array([100 * c["ci95"][0] for c in sel])
                hi = np.array([100 * c["ci95"][1] for c in sel])
                qa = kind == "q-qa"  # hollow, smaller markers so that equal accuracies stay visible
                ax.plot(x, y, color=color, ls=style, marker=marker, ms=5 if qa else 8, mfc="none" if qa else color,
                        mew=1.5, label=f"{q.upper()} + {name}")
                if len(quants) == 1 and len(lines) == 2:  # with several presets or S^Q the bands would hide the lines
                    ax.fill_between(x, lo, hi, color=color, alpha=0.07, lw=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(keeps, [f"{k:g}" for k in keeps])
        ax.minorticks_off()
        ax.set_title(host)
        ax.set_xlabel("keep ratio (share of visual tokens)")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(hosts):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)")
    n = fp_dense[0]["n"] if fp_dense else (cfgs[0]["n"] if cfgs else 0)
    shaded = "; shaded: Wilson 95 % CI" if len(quants) == 1 and len(lines) == 2 else ""
    fig.suptitle(f"{task}: accuracy vs keep ratio (n = {n}{shaded})", fontsize=11)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def qa_minus_host(results: dict, path: Path) -> Path:
    """QA − host accuracy difference (points) with paired-bootstrap 95 % CI bars, one panel per task (all-token
    calibration; the prune-calibrated pairs are in the report's table)."""
    comps = [c for c in results["comparisons"] if not c.get("calib_pruned")]
    tasks = results["config"]["tasks"]
    quants = results["config"]["quant"]
    sens = swept_sensitivities(results["config"])
    fig, axes = plt.subplots(len(tasks), 1, figsize=(max(8.0, 0.42 * len(comps) / max(1, len(tasks)) + 3), 3.4 * len(tasks)),
                             squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, task in zip(axes[:, 0], tasks):
        sel = [c for c in comps if c["task"] == task]
        labels = sorted({(c["host"], -c["keep"]) for c in sel}, key=lambda t: (results["config"]["hosts"].index(t[0]), t[1]))
        xpos = {lab: i for i, lab in enumerate(labels)}
        series = [(q, x) for q in quants for x in sens]
        width = 0.8 / max(1, len(series))
        for qi, (q, x_sens) in enumerate(series):
            qs = [c for c in sel if c["quant"] == q and c.get("sensitivity", "paper") == x_sens]
            name = q.upper() + (f" · {qa_name(x_sens)}host" if len(sens) > 1 else "")
            x = np.array([xpos[(c["host"], -c["keep"])] for c in qs]) + (qi - (len(series) - 1) / 2) * width
            y = np.array([100 * c["diff"] for c in qs])
            err = np.array([[100 * (c["diff"] - c["ci95"][0]) for c in qs], [100 * (c["ci95"][1] - c["diff"]) for c in qs]])
            ax.errorbar(x, y, yerr=err, fmt="o", color=colors[qi % len(colors)], capsize=3, label=name)
            for xi, yi, c in zip(x, y, qs):
                if c["significant"]:
                    ax.annotate("*" if not c["significant_holm"] else "**", (xi, yi), textcoords="offset points",
                                xytext=(5, 2), fontsize=11, color=colors[qi % len(colors)])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(labels)), [f"{h}\n@{-k:g}" for h, k in labels], fontsize=8)
        ax.set_ylabel("QA − host (points)")
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.set_title(f"{task}: QA-host − host, paired bootstrap 95 % CI (* McNemar p < 0.05, ** after Holm)",
                     fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _grid_overlay(ax, img, grid, kept=None, marked=None, heat=None, mark_color="yellow"):
    gh, gw = grid
    h, w = img.shape[:2]
    ax.imshow(img, extent=(0, gw, gh, 0), interpolation="nearest")
    if heat is not None:
        ax.imshow(np.asarray(heat).reshape(gh, gw), extent=(0, gw, gh, 0), cmap="magma", alpha=0.55,
                  interpolation="nearest")
    if kept is not None:
        mask = np.ones(gh * gw, bool)
        mask[list(kept)] = False  # dropped tokens
        shade = np.zeros((gh, gw, 4))
        shade[..., 3] = mask.reshape(gh, gw) * 0.72
        ax.imshow(shade, extent=(0, gw, gh, 0), interpolation="nearest")
        for i in kept:
            ax.add_patch(Rectangle((i % gw, i // gw), 1, 1, fill=False, ec="#00e5ff", lw=0.6))
    if marked is not None:
        for i in marked:
            ax.add_patch(Rectangle((i % gw + 0.08, i // gw + 0.08), 0.84, 0.84, fill=False, ec=mark_color, lw=1.1))
    ax.set_xlim(0, gw)
    ax.set_ylim(gh, 0)
    ax.set_xticks([])
    ax.set_yticks([])


def gallery(results: dict, gallery_dir: Path, kept: dict, path: Path) -> Path | None:
    """Rows = images; columns = image with the patch grid, tokens kept by the host, by the QA variant
    (yellow: kept by QA but not by the host), S^Q heat map with the top-k outlier tokens outlined."""
    data_path = Path(gallery_dir) / "data.json"
    g = results.get("gallery")
    if not g or not data_path.exists():
        return None
    data = json.loads(data_path.read_text())
    grid = data["grid"]
    entries = data["items"]
    host_kept, qa_kept = kept.get(g["host_id"], {}), kept.get(g["qa_id"], {})
    entries = [e for e in entries if e["uid"] in host_kept and e["uid"] in qa_kept]
    if not entries:
        return None
    from PIL import Image

    fig, axes = plt.subplots(len(entries), 4, figsize=(12, 3.2 * len(entries)), squeeze=False)
    for row, e in zip(axes, entries):
        img = np.asarray(Image.open(Path(gallery_dir) / e["image_file"]).convert("RGB"))
        hk, qk = host_kept[e["uid"]], qa_kept[e["uid"]]
        k = len(qk)
        sq = np.asarray(e["sq"])
        top = np.argsort(-sq, kind="stable")[:k]
        _grid_overlay(row[0], img, grid)
        q = e["question"] if len(e["question"]) < 60 else e["question"][:57] + "..."
        row[0].set_title(f"{q}\nanswer: {e['answer']}", fontsize=8)
        _grid_overlay(row[1], img, grid, kept=hk)
        row[1].set_title(f"{g['host']} keeps {len(hk)}", fontsize=9)
        extra = sorted(set(qk) - set(hk))
        _grid_overlay(row[2], img, grid, kept=qk, marked=extra)
        row[2].set_title(f"QA-{g['host']} keeps {k} ({len(extra)} differ, yellow)", fontsize=9)
        _grid_overlay(row[3], img, grid, heat=sq, marked=top, mark_color="#00ff66")
        overlap = len(set(top) & set(qk))
        row[3].set_title(f"S^Q heat, top-{k} outliers (green)\n{overlap}/{k} kept by QA, "
                         f"{len(set(top) & set(hk))}/{k} by host", fontsize=8)
    fig.suptitle(f"{g['task']} · {g['quant'].upper()} · keep {g['keep']:g}: kept visual tokens on the "
                 f"{grid[0]}×{grid[1]} patch grid (dimmed = dropped)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
