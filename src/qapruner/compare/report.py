"""results.json, report.md (the paper's Table 1 shape first) and report.html."""

from __future__ import annotations

import html
import time
from pathlib import Path

from .config import CompareConfig, swept_sensitivities
from .grid import qa_name
from .image_dependence import image_dependence, markdown_section
from .calibration_section import markdown_section as calibration_section
from .stats import pruned_vs_dense_calibration, qa_vs_host

SUMMARY_KEYS = ("n", "correct", "accuracy", "ci95", "visual_tokens", "timing", "seconds", "items_per_second",
                "subset", "quant_info", "mode")


def build_results(cfg: CompareConfig, grid: dict, corr: dict, env: dict, argv: list[str], command: str) -> dict:
    """The JSON document: every configuration, paired statistics, seeds, subset, environment, command line."""
    configs = []
    for c in grid["configs"]:
        s = c["summary"]
        configs.append({"id": c["id"], **c["row"], **{k: s.get(k) for k in SUMMARY_KEYS},
                        **({"cpu_capability": s["cpu_capability"]} if s.get("cpu_capability") else {}),
                        "items_file": f"items/{c['id']}.jsonl"})
    comps = qa_vs_host(grid["configs"], corr, cfg.bootstrap_reps, cfg.seed)
    calib = pruned_vs_dense_calibration(grid["configs"], corr, cfg.bootstrap_reps, cfg.seed)
    tasks = {name: {"n": len(t.items), "subset": t.meta.get("subset") or f"all {len(t.items)} items",
                    "split": t.meta.get("split"), "source": t.meta.get("source")}
             for name, t in grid["tasks"].items()}
    gallery = None
    if grid.get("gallery"):
        plan, _ = grid["gallery"]
        ids = {(c["task"], c["quant"], c["host"], c["keep"], c["qa"], c["sensitivity"]): c["id"] for c in configs
               if not c.get("calib_pruned")}
        at = (plan.task, plan.quant, plan.host, plan.keep)
        gallery = {"task": plan.task, "quant": plan.quant, "host": plan.host, "keep": plan.keep, "uids": plan.uids,
                   "host_id": ids.get((*at, False, None)), "qa_id": ids.get((*at, True, cfg.gallery_sensitivity)),
                   "sensitivity": cfg.gallery_sensitivity}
    kinds = {it.uid: it.kind for t in grid["tasks"].values() for it in t.items if it.kind}
    return {
        "image_dependence": image_dependence(configs, corr, kinds),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command, "argv": argv,
        "config": cfg.to_dict(),
        "paper_keep": cfg.paper_keep,
        "seeds": {"subset": cfg.seed, "random_host": cfg.seed, "calibration_sample": cfg.calibration_seed,
                  "bootstrap": cfg.seed},
        "tasks": tasks,
        "environment": env,
        "configs": configs,
        "comparisons": comps,
        **({"calibration_comparisons": calib} if calib else {}),
        "gallery": gallery,
    }


# ---------------------------------------------------------------------------------------------- markdown
def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _ci(ci) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _p(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _find(results, task, kind, quant=None, host=None, keep=None, sensitivity=None):  # kinds: grid.Row.kind
    for c in results["configs"]:
        if c["task"] == task and c["kind"] == kind and c["quant"] == quant and c["host"] == host and c["keep"] == keep \
                and (sensitivity is None or c.get("sensitivity") == sensitivity):
            return c
    return None


def table1(results: dict) -> tuple[list[str], list[list[str]]]:
    """Rows = task (× preset); columns = FP dense | Wq dense | Wq + host | Wq + QA-host per host at the paper keep."""
    cfg = results["config"]
    k = results["paper_keep"]
    multi = len(cfg["quant"]) > 1
    w = "Wq" if multi else cfg["quant"][0].upper()  # one preset: name it in the headers
    blind = any(c["kind"] == "fp-blank" for c in results["configs"])
    header = ["task"] + (["Wq"] if multi else []) + ["n", "FP dense"] + (["FP blank image"] if blind else []) + \
             [f"{w} dense"]
    sens = swept_sensitivities(cfg)
    for h in cfg["hosts"]:
        header += [f"{w} + {h}"] + [f"{w} + {qa_name(x)}{h}" for x in sens]
    rows = []
    for t in cfg["tasks"]:
        fp = _find(results, t, "fp-dense")
        for q in cfg["quant"]:
            r = [t] + ([q.upper()] if multi else []) + [str(fp["n"] if fp else "–"), _pct(fp and fp["accuracy"])] \
                + ([_pct(_c(_find(results, t, "fp-blank")))] if blind else []) + [_pct(_c(_find(results, t, "q-dense", q)))]
            for h in cfg["hosts"]:
                ca = _c(_find(results, t, "q-host", q, h, k))
                r.append(_pct(ca))
                for x in sens:
                    cb = _c(_find(results, t, "q-qa", q, h, k, x))
                    mark = "" if ca is None or cb is None else (" ▲" if cb > ca else (" ▼" if cb < ca else " ="))
                    r.append(_pct(cb) + mark)
            rows.append(r)
    return header, rows


def _c(c):
    return None if c is None else c["accuracy"]


def full_table(results: dict, task: str) -> tuple[list[str], list[list[str]]]:
    header = ["configuration", "quant", "host", "keep", "QA", "visual tokens", "accuracy %", "95 % CI (Wilson)", "n",
              "select s", "prefill s"]
    rows = []
    for c in results["configs"]:
        if c["task"] != task:
            continue
        vt = c.get("visual_tokens") or {}
        tm = c.get("timing") or {}
        rows.append([c["label"], c["quant"] or "FP", c["host"] or "–", "1" if c["keep"] is None else f"{c['keep']:g}",
                     _qa_cell(c), f"{vt.get('kept', '?')}/{vt.get('before', '?')}", _pct(c["accuracy"]),
                     _ci(c["ci95"]), str(c["n"]), f"{tm.get('select_s', 0):.2f}", f"{tm.get('prefill_s', 0):.2f}"])
    return header, rows


def _qa_cell(c: dict) -> str:
    if not c["qa"]:
        return ""
    return "yes" if c.get("sensitivity") in (None, "paper") else f"yes ({c['sensitivity']})"


def diff_table(results: dict) -> tuple[list[str], list[list[str]]]:
    multi = len(swept_sensitivities(results["config"])) > 1
    header = ["task", "Wq", "host", "keep"] + (["S^Q"] if multi else []) + \
             ["host %", "QA-host %", "QA − host (pts)", "95 % CI (paired bootstrap)", "McNemar p (exact)", "Holm p",
              "QA-only / host-only right", "significant"]
    rows = []
    for c in results["comparisons"]:
        sig = "yes (Holm)" if c["significant_holm"] else ("yes (p < 0.05, not after Holm)" if c["significant"] else "no")
        host = c["host"] + (" (calibrated on pruned tokens)" if c.get("calib_pruned") else "")
        rows.append([c["task"], c["quant"].upper(), host, f"{c['keep']:g}"]
                    + ([c.get("sensitivity") or "paper"] if multi else []) + [_pct(c["acc_a"]), _pct(c["acc_b"]),
                     f"{100 * c['diff']:+.1f}", _ci(c["ci95"]), _p(c["p_value"]), _p(c["p_holm"]),
                     f"{c['b_only']} / {c['a_only']}", sig])
    return header, rows


def significance_sentences(results: dict) -> list[str]:
    comps = results["comparisons"]
    if not comps:
        return ["No QA − host pairs were evaluated."]
    sig = [c for c in comps if c["significant"]]
    holm = [c for c in comps if c["significant_holm"]]
    name = lambda c: (f"{c['task']} {c['quant'].upper()} {qa_name(c.get('sensitivity'))}{c['host']} @ {c['keep']:g} "  # noqa: E731
                      f"({100 * c['diff']:+.1f} pts, p = {_p(c['p_value'])})")
    out = []
    if not sig:
        out.append(f"None of the {len(comps)} QA − host differences is significant at p < 0.05 (exact McNemar); "
                   "on these items the QA variant is statistically indistinguishable from its host.")
    else:
        better = [c for c in sig if c["diff"] > 0]
        worse = [c for c in sig if c["diff"] < 0]
        out.append(f"{len(sig)} of {len(comps)} QA − host differences are significant at p < 0.05 (exact McNemar, "
                   "uncorrected).")
        if better:
            out.append("QA better: " + "; ".join(map(name, better)) + ".")
        if worse:
            out.append("QA worse: " + "; ".join(map(name, worse)) + ".")
        out.append(f"{len(holm)} remain significant after Holm correction over all {len(comps)} comparisons"
                   + (": " + "; ".join(map(name, holm)) + "." if holm else "."))
    small = min(c["n"] for c in comps)
    if small < 200:
        out.append(f"With n = {small} items per configuration only large differences can reach significance "
                   "(a 95 % CI is roughly ±{:.0f} points wide at 50 % accuracy).".format(100 * 1.96 * (0.25 / small) ** 0.5))
    return out


SENSITIVITY_TEXT = {"paper": "paper (simulated INT{bits}/G{group} error and span)",
                    "matched": "matched (E from the deployed quantizer, INT{bits}/G{group} span)",
                    "norm": "norm (L2 norm of each projected token, the authors' released code)"}


def _sensitivity_text(cfg: dict) -> str:
    return ", ".join(SENSITIVITY_TEXT[x].format(bits=cfg["sens_bits"], group=cfg["sens_group_size"])
                     for x in swept_sensitivities(cfg))


def _isa(env: dict) -> str:
    """" (AVX512)" when recorded: float results and timings depend on the CPU kernels (docs/compare.md)."""
    return f" ({env['cpu_capability']})" if env.get("cpu_capability") else ""


def _seeds(cfg: dict) -> str:
    c = cfg.get("calib_seed")
    if c is None or c == cfg["seed"]:
        return f"seed {cfg['seed']} (subset, random host, calibration sample, bootstrap)."
    return f"seed {cfg['seed']} (subset, random host, bootstrap), calibration sample seed {c}."


def _mixed_isa(results: dict) -> list[str]:
    """A warning when the configurations were computed with different CPU kernels (recorded per configuration
    since the checkpointed runs that span machines)."""
    isas = [c.get("cpu_capability") for c in results["configs"]]
    counts = {k or "not recorded": isas.count(k) for k in dict.fromkeys(isas)}
    if len(counts) < 2:
        return []
    return ["Configurations were computed on CPUs with different kernels ("
            + ", ".join(f"{k}: {n}" for k, n in counts.items()) + "). Float reductions differ between them, so a "
            "near-tie answer can flip: paired differences between such rows carry that noise too.", ""]


def _gemm_text(cfg: dict) -> str:
    if cfg.get("gemm", "float") == "float":
        return ""
    return " · W·A rows multiply their integer codes (exact int8 GEMM, scaled after; docs/quantization.md)"


def markdown(results: dict, plots: dict[str, str]) -> str:
    cfg = results["config"]
    k = results["paper_keep"]
    env = results["environment"]
    L = ["# qapruner compare", "",
         f"Model `{cfg['model']}` · quantization {', '.join(q.upper() for q in cfg['quant'])} · hosts "
         f"{', '.join(cfg['hosts'])} · keep ratios {', '.join(f'{x:g}' for x in cfg['keeps'])} · alpha {cfg['alpha']} · "
         f"sensitivity {_sensitivity_text(cfg)} · CDPruner relevance {cfg.get('relevance', 'llm')} · mode {cfg['mode']}"
         f"{' (greedy)' if cfg['mode'] == 'generate' else ' (next-token likelihood of the candidate answers)'}"
         f"{_gemm_text(cfg)}.", "",
         "Items: " + "; ".join(f"{t}: {d['subset']}" for t, d in results["tasks"].items())
         + f". Every configuration of a task is scored on the same items; " + _seeds(cfg), "",
         f"Command: `{results['command']}`", "",
         f"Environment: python {env.get('python')}, torch {env.get('torch')}, transformers {env.get('transformers')}, "
         f"{env.get('device')}{_isa(env)}, {env.get('cpu_threads')} threads. Created {results['created']}.", ""]
    L += _mixed_isa(results)
    wall = results.get("wall")
    if wall and wall.get("seconds") is not None:
        L += [f"Wall time of this invocation (grid and statistics, before plots): {wall['seconds'] / 60:.1f} min; "
              f"{wall['configs_computed']} configurations computed, {wall['configs_reused']} reused from earlier runs.",
              ""]
    elif wall:  # added to results.json by hand: an estimate and where it comes from
        L += [f"Wall time of this invocation: {wall.get('approx', 'not recorded')} ({wall['configs_computed']} "
              f"configurations computed, {wall['configs_reused']} reused). Source: {wall.get('source', 'unknown')}.",
              ""]
    if results.get("missing_items"):  # added to results.json by hand: which per-item records are lost, and why
        L += [results["missing_items"]["why"], ""]
    if cfg.get("notes"):
        L += [cfg["notes"].strip(), ""]
    tokens = next((c["visual_tokens"] for c in results["configs"] if c["keep"] == k and c.get("visual_tokens")), None)
    L += [f"## Table 1 shape: accuracy (%) at keep {k:g}"
          + (f" ({tokens['kept']} of {tokens['before']} visual tokens)" if tokens else ""), "",
          ("The paper's setting is 12.5 % (32 of 256 tokens on LLaVA-1.3; 64 of 576 = 11.1 % on LLaVA-1.5). "
           if k == 0.125 else "12.5 % was not swept: the smallest keep ratio is shown. ")
          + ("Wq = the quantized model. " if len(cfg["quant"]) > 1 else "")
          + "▲/▼/=: QA-host above/below/equal to its host (the paired statistics below say whether it matters).", ""]
    L += _table(*table1(results)) + [""]
    L += ["## Paired differences QA-host − host", ""]
    L += ["- " + s for s in significance_sentences(results)] + [""]
    L += _table(*diff_table(results)) + [""]
    L += ["McNemar: exact two-sided binomial test on the items exactly one of the two got right. CI: paired "
          f"bootstrap over items ({cfg['bootstrap_reps']} resamples). Holm: family-wise correction over all rows "
          "of this table.", ""]
    L += markdown_section(results, _pct, _table)
    L += calibration_section(results, _pct, _ci, _p, _table)
    for t in cfg["tasks"]:
        L += [f"## All configurations: {t}", ""] + _table(*full_table(results, t)) + [""]
    if plots:
        L += ["## Plots", ""]
        for title, rel in plots.items():
            L += [f"### {title}", "", f"![{title}]({rel})", ""]
    return "\n".join(L) + "\n"


def html_report(md_text: str) -> str:
    """A dependency-free rendering of report.md: headings, pipe tables, images, paragraphs, bullets."""
    out = ["<!doctype html><meta charset='utf-8'><title>qapruner compare</title>",
           "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;"
           "font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
           "td:first-child{text-align:left}img{max-width:100%}code{background:#f4f4f4}</style>"]
    lines = md_text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            cells = [[html.escape(c.strip()) for c in r.strip("|").split("|")] for r in block]
            out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in cells[0]) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in cells[2:]]
            out.append("</table>")
            continue
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            out.append(f"<img alt='{html.escape(alt)}' src='{html.escape(src.rstrip(')'))}'>")
        elif line.startswith("- "):
            out.append(f"<li>{_inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(out) + "\n"


def _inline(text: str) -> str:
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if j % 2 else p for j, p in enumerate(parts))


def write_reports(results: dict, out_dir: Path, plots: dict[str, str]) -> tuple[Path, Path]:
    md = markdown(results, plots)
    md_path, html_path = Path(out_dir) / "report.md", Path(out_dir) / "report.html"
    md_path.write_text(md)
    html_path.write_text(html_report(md))
    return md_path, html_path
