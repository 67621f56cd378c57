"""The report's section on prune-aware calibration (``prune_calibration = true``): each host / QA-host row run on
a model calibrated on all visual tokens (as everywhere else in the report) and on one calibrated on the token
sets that row keeps, paired on the same items."""

from __future__ import annotations

from .grid import qa_name


def markdown_section(results: dict, pct, ci, p, table) -> list[str]:
    """The section, or [] when the grid has no prune-calibrated rows."""
    comps = results.get("calibration_comparisons") or []
    if not comps:
        return []
    qa = {(c["task"], c["quant"], c["host"], c["keep"], c["sensitivity"]): c for c in results["comparisons"]
          if c.get("calib_pruned")}
    header = ["task", "Wq", "row", "keep", "calibrated on all tokens %", "on pruned tokens %",
              "pruned − all (pts)", "95 % CI", "McNemar p", "Holm p", "QA − host, pruned calibration (pts, p)"]
    rows = []
    for c in comps:
        name = f"{qa_name(c['sensitivity'])}{c['host']}" if c["qa"] else c["host"]
        vs = qa.get((c["task"], c["quant"], c["host"], c["keep"], c["sensitivity"])) if c["qa"] else None
        rows.append([c["task"], c["quant"].upper(), name, f"{c['keep']:g}", pct(c["acc_a"]), pct(c["acc_b"]),
                     f"{100 * c['diff']:+.1f}", ci(c["ci95"]), p(c["p_value"]), p(c["p_holm"]),
                     f"{100 * vs['diff']:+.1f} ({p(vs['p_value'])})" if vs else ""])
    sig = [c for c in comps if c["significant_holm"]]
    L = ["## Calibrating on the pruned token set", "",
         "GPTQ and static activation scales are calibrated everywhere else in this report on all visual tokens. "
         "Here each host / QA-host row also runs on a model calibrated on the token sets that row keeps (the same "
         "host, keep and QA setting, on the same calibration images), so the quantizer sees at calibration the "
         "token population it sees at inference. Paired on the same items; Holm over the rows of this table.", ""]
    L += table(header, rows) + [""]
    L += [f"{len(sig)} of {len(comps)} differences (pruned − all-token calibration) are significant after Holm"
          + (": " + "; ".join(f"{c['task']} {c['quant'].upper()} {qa_name(c['sensitivity']) if c['qa'] else ''}"
                               f"{c['host']} ({100 * c['diff']:+.1f} pts)" for c in sig) if sig else "") + ".", ""]
    return L
