"""How much of each task's accuracy the image decides: accuracy per question type and on the image-dependent
items, for every configuration, against the blind baseline (FP dense on a blank image, the same items).

    image-dependent items = the items the blind model answers wrong

On those items a configuration can only be right by reading the image, so dropping or quantizing visual
tokens shows there undiluted by answers the text alone decides. The blind model is right by chance on part of
the items the image decides (half of balanced yes/no questions), so this set is a lower bound of them; the
per-type rows say where the chance level lies.
"""

from __future__ import annotations


def image_dependence(configs: list[dict], corr: dict[str, dict[str, bool]], kinds: dict[str, str]) -> dict:
    """Per task with a blind row: {"blind_id", "n", "image_dependent", "kinds": {kind: n}, "rows": [...]}; each
    row {"id", "label", "all", "image_dependent", "kinds": {kind: accuracy}} (accuracies in [0, 1])."""
    out = {}
    tasks = []
    for c in configs:
        if c["task"] not in tasks:
            tasks.append(c["task"])
    for task in tasks:
        blind = next((c for c in configs if c["task"] == task and c["kind"] == "fp-blank" and c["id"] in corr), None)
        if blind is None:
            continue
        uids = sorted(corr[blind["id"]])
        dependent = [u for u in uids if not corr[blind["id"]][u]]
        by_kind: dict[str, list[str]] = {}
        for u in uids:
            if kinds.get(u):
                by_kind.setdefault(kinds[u], []).append(u)
        rows = []
        for c in configs:
            if c["task"] != task or c["id"] not in corr:
                continue
            right = corr[c["id"]]
            rows.append({"id": c["id"], "label": c["label"], "all": _acc(right, uids),
                         "image_dependent": _acc(right, dependent),
                         "kinds": {k: _acc(right, us) for k, us in sorted(by_kind.items())}})
        out[task] = {"blind_id": blind["id"], "n": len(uids), "image_dependent": len(dependent),
                     "kinds": {k: len(us) for k, us in sorted(by_kind.items())}, "rows": rows}
    return out


def _acc(right: dict[str, bool], uids: list[str]) -> float | None:
    have = [right[u] for u in uids if u in right]
    return sum(have) / len(have) if have else None


def markdown_section(results: dict, pct, table) -> list[str]:
    """The report's section, or [] when no configuration ran on a blank image."""
    dep = results.get("image_dependence") or {}
    if not dep:
        return []
    L = ["## How much the image decides", "",
         "The blind baseline is FP dense with every image replaced by a blank white one, on the same items. "
         "*Image-dependent* items are those the blind model gets wrong: a configuration can only get them right by "
         "reading the image. Per-type columns show where the text alone already gets the answer (chance level: "
         "1 / number of answers of that type).", ""]
    for task, d in dep.items():
        rows = {r["id"]: r for r in d["rows"]}
        blind = rows[d["blind_id"]]
        fp = next((r for r in d["rows"] if r["label"] == "FP dense"), None)
        share = d["image_dependent"] / d["n"] if d["n"] else 0.0
        L += [f"### {task}", "",
              f"FP dense {pct(fp and fp['all'])} % with the image, {pct(blind['all'])} % on a blank image; the blind "
              f"model gets {d['image_dependent']} of {d['n']} items wrong ({100 * share:.0f} % of the column is "
              "image-dependent).", ""]
        kinds = list(d["kinds"])
        header = ["configuration", f"all (n = {d['n']})", f"image-dependent (n = {d['image_dependent']})"] + \
                 [f"{k} (n = {d['kinds'][k]})" for k in kinds]
        body = [[r["label"], pct(r["all"]), pct(r["image_dependent"])] + [pct(r["kinds"][k]) for k in kinds]
                for r in d["rows"]]
        L += table(header, body) + [""]
    return L
