"""A committed report regenerated from its archived per-item records, without a model or the task data:
``qapruner compare --from-archive DIR``."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import QAPrunerError
from ..eval.stats import wilson_ci
from ..io import write_json
from .archive import read_records
from .config import swept_sensitivities
from .image_dependence import image_dependence
from .pipeline import write_outputs
from .stats import holm, pruned_vs_dense_calibration, qa_vs_host


def regenerate(out_dir: str | Path, log=print) -> dict:
    """Rewrite DIR/results.json, report.md/html and the PNGs from results.json and the archive(s): each
    configuration's n / correct / accuracy / Wilson CI and the paired QA − host statistics are recomputed from the
    per-item records. Everything the records do not determine (timing, environment, wall time) stays as
    results.json has it. Configurations without records (none in a complete report) keep their results.json
    values, and so do the comparisons that need them; Holm is redone over all comparisons."""
    out_dir = Path(out_dir)
    path = out_dir / "results.json"
    if not path.is_file():
        raise QAPrunerError(f"'{path}' does not exist; --from-archive needs a report directory written by compare.")
    results = json.loads(path.read_text())
    records = read_records(out_dir, results)
    corr, kept, grid, kinds = {}, {}, [], {}
    first = swept_sensitivities(results["config"])[0]
    for c in results["configs"]:  # reports made before the sensitivity sweep name it only in their config
        c.setdefault("sensitivity", first if c["qa"] else None)
    for c in results.get("comparisons") or []:
        c.setdefault("sensitivity", first)
    for c in results["configs"]:
        rec = records.get(c["id"])
        if rec is None:
            continue
        if rec["header"].get("config", {}).get("task", c["task"]) != c["task"]:
            raise QAPrunerError(f"The archived items of {c['id']} belong to another task than results.json says.")
        rows = rec["rows"]
        corr[c["id"]] = {r["uid"]: bool(r["correct"]) for r in rows}
        kept[c["id"]] = {r["uid"]: r["kept"] for r in rows if "kept" in r}
        kinds.update({r["uid"]: r["kind"] for r in rows if r.get("kind")})
        n, correct = len(rows), sum(corr[c["id"]].values())
        c.update({"n": n, "correct": correct, "accuracy": correct / n if n else 0.0,
                  "ci95": list(wilson_ci(correct, n))})
        grid.append({"id": c["id"], "row": {**{k: c[k] for k in ("task", "quant", "host", "keep", "qa", "sensitivity")},
                                            "calib_pruned": c.get("calib_pruned", False)}})
    cfg = results["config"]
    key = lambda c: (c["task"], c["quant"], c["host"], c["keep"], c["sensitivity"], c.get("calib_pruned", False))  # noqa: E731
    new = {key(c): c for c in qa_vs_host(grid, corr, cfg["bootstrap_reps"], cfg["seed"])}
    old = results.get("comparisons") or []
    comps = [new.pop(key(c), c) for c in old] + list(new.values())
    carried = [c for c in comps if not (c["host_id"] in corr and c["qa_id"] in corr)]
    for c, p in zip(comps, holm([c["p_value"] for c in comps])):  # the same family (and alpha 0.05) as qa_vs_host
        c.update({"p_holm": p, "significant": c["p_value"] < 0.05, "significant_holm": p < 0.05})
    results["comparisons"] = comps
    calib = pruned_vs_dense_calibration(grid, corr, cfg["bootstrap_reps"], cfg["seed"])
    if calib:
        results["calibration_comparisons"] = calib
    results["image_dependence"] = image_dependence(results["configs"], corr, kinds)
    missing = len(results["configs"]) - len(grid)
    if missing:
        log(f"{missing} configurations have no archived records: their results.json values are kept, and so are "
            f"{len(carried)} of {len(comps)} comparisons")
    results["outputs"] = write_outputs(results, out_dir, kept, reuse_gallery=True)
    write_json(path, results)
    return results
