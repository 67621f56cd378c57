"""Paired statistics of the grid: every row of a task scored the same items, so QA-host and host are
compared item by item (exact McNemar on the discordant pairs, paired bootstrap CI of the difference)."""

from __future__ import annotations

import numpy as np

from ..eval.stats import mcnemar, paired_bootstrap


def aligned(a: dict[str, bool], b: dict[str, bool]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Correctness vectors over the uids both hold, in a fixed order."""
    uids = sorted(set(a) & set(b))
    return (np.array([a[u] for u in uids], bool), np.array([b[u] for u in uids], bool), uids)


def paired(a: dict[str, bool], b: dict[str, bool], reps: int, seed: int) -> dict:
    """b − a: accuracy difference, exact McNemar p, paired bootstrap 95 % CI."""
    va, vb, uids = aligned(a, b)
    if len(uids) != len(a) or len(uids) != len(b):
        raise ValueError("paired comparison needs both configurations scored on the same items")
    m = mcnemar(va, vb)
    boot = paired_bootstrap(va, vb, reps=reps, seed=seed)
    return {"n": len(uids), "acc_a": float(va.mean()), "acc_b": float(vb.mean()), "diff": boot["diff"],
            "ci95": boot["ci95"], "p_value": m["p_value"], "a_only": m["a_only"], "b_only": m["b_only"],
            "bootstrap_reps": reps, "bootstrap_seed": seed}


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (family-wise error over all comparisons of a report)."""
    m = len(pvalues)
    order = np.argsort(pvalues, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adj[i] = running
    return adj.tolist()


def qa_vs_host(configs: list[dict], correctness: dict[str, dict[str, bool]], reps: int, seed: int,
               alpha: float = 0.05) -> list[dict]:
    """For each QA-host row (one per sensitivity swept) whose host row exists: QA − host on the same items (a
    prune-calibrated QA row against the prune-calibrated host row)."""
    pairs = _pairs(configs, lambda k: k[:4] + (False, None, k[6]) if k[4] else None)
    out = [{"task": k[0], "quant": k[1], "host": k[2], "keep": k[3], "sensitivity": k[5], "calib_pruned": k[6],
            "host_id": a, "qa_id": b, **paired(correctness[a], correctness[b], reps, seed)} for k, a, b in pairs]
    return _holm_marked(out, alpha)


def pruned_vs_dense_calibration(configs: list[dict], correctness: dict[str, dict[str, bool]], reps: int, seed: int,
                                alpha: float = 0.05) -> list[dict]:
    """For each prune-calibrated row: (calibrated on the pruned token sets) − (calibrated on all tokens), the same
    host / QA row otherwise, on the same items. Holm runs over this family alone."""
    pairs = _pairs(configs, lambda k: k[:6] + (False,) if k[6] else None)
    out = [{"task": k[0], "quant": k[1], "host": k[2], "keep": k[3], "qa": k[4], "sensitivity": k[5],
            "dense_id": a, "pruned_id": b, **paired(correctness[a], correctness[b], reps, seed)} for k, a, b in pairs]
    return _holm_marked(out, alpha)


def _pairs(configs: list[dict], partner) -> list[tuple[tuple, str, str]]:
    """(key of b, id of a, id of b) for every row b whose ``partner(key)`` row a exists; keys are
    (task, quant, host, keep, qa, sensitivity, calib_pruned)."""
    by_key = _by_key(configs)
    return [(k, by_key[partner(k)], b) for k, b in by_key.items() if partner(k) is not None and partner(k) in by_key]


def _by_key(configs: list[dict]) -> dict[tuple, str]:
    by_key = {}
    for c in configs:
        r = c["row"]
        if r["host"] is not None:
            sens = (r.get("sensitivity") or "paper") if r["qa"] else None
            by_key[(r["task"], r["quant"], r["host"], r["keep"], r["qa"], sens, bool(r.get("calib_pruned")))] = c["id"]
    return by_key


def _holm_marked(out: list[dict], alpha: float) -> list[dict]:
    for c, p in zip(out, holm([c["p_value"] for c in out])):
        c["p_holm"] = p
        c["significant"] = c["p_value"] < alpha
        c["significant_holm"] = p < alpha
    return out
