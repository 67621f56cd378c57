"""Resuming a grid: which configurations are finished, checkpoints of a run that has not finished, and the rule
for rows computed on another machine (compare/orchestrate.py runs the grid; compare/archive.py packs records)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..runinfo import cpu_capability
from .archive import checkpoint
from .grid import Row, model_key


def summary_path(items_dir: Path, cid: str) -> Path:
    return items_dir / f"{cid}.summary.json"


def finished_summary(items_dir: Path, cid: str, fingerprint: dict) -> dict | None:
    """The saved summary of a complete configuration, or None when it must (still) run."""
    p = summary_path(items_dir, cid)
    if not p.exists() or not (items_dir / f"{cid}.jsonl").exists():
        return None
    try:
        s = json.loads(p.read_text())
    except json.JSONDecodeError:
        return None
    return s if s.get("fingerprint") == json.loads(json.dumps(fingerprint)) else None


class Checkpointer:
    """Packs finished configurations into DIR/items.partial.tar.xz every ``every_s`` seconds and when the run
    stops, so a run cut short (a session that ends, Ctrl-C) can be committed and resumed on another machine."""

    def __init__(self, out_dir: Path, enabled: bool, every_s: float = 600.0):
        self.out_dir, self.enabled, self.every_s = out_dir, enabled, every_s
        self.last = time.monotonic()

    def maybe(self) -> None:
        if self.enabled and time.monotonic() - self.last >= self.every_s:
            self.final()

    def final(self) -> None:
        if self.enabled:
            checkpoint(self.out_dir)
            self.last = time.monotonic()


def rerun_mixed_kernels(rows: list[Row], summaries: dict, ids: dict, items_dir: Path, cfg: CompareConfig,
                        backend, log) -> None:
    """Rows of one quantized copy are compared with each other, so they must come from one copy. A copy quantized
    with other CPU kernels (AVX2 vs AVX512: GPTQ and activation rounding amplify their last-bit differences,
    docs/compare.md) is another copy: when such a model's rows are only partly finished, all of them rerun here.
    A fully finished model is kept whatever it ran on."""
    here = cpu_capability()
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        if r.quant is not None:
            groups.setdefault(model_key(r, cfg, backend.calibrates(r.quant)), []).append(r)
    for key, group in groups.items():
        done = [r for r in group if summaries[r] is not None]
        other = {summaries[r].get("cpu_capability", here) for r in done} - {here}
        if len(done) == len(group) or not other:
            continue
        log(f"{len(done)} finished configurations of {key[0]}{f' (calibrated on {key[1]})' if key[1] else ''} ran "
            f"with {', '.join(sorted(map(str, other)))} CPU kernels, this machine has {here}: rerunning all "
            f"{len(group)} configurations of that quantized model, so that its rows stay comparable")
        for r in done:
            summaries[r] = None
            for suffix in (".jsonl", ".summary.json"):
                (items_dir / f"{ids[r]}{suffix}").unlink(missing_ok=True)
