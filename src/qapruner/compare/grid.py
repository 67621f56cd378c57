"""The rows of the comparison and their stable ids.

Per task: FP dense; FP dense on a blank image (the blind baseline, unless ``blank`` is off); FP + host at every keep (reference, unless ``fp_pruned`` is off); and per quantization
preset: Wq dense, Wq + host and Wq + QA-host at every keep. All rows of a task score the same items.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from ..eval.config import EvalConfig
from ..prune import PruneConfig
from ..runinfo import config_hash
from .config import CompareConfig


@dataclass(frozen=True)
class Row:
    task: str
    quant: str | None = None   # None = FP
    host: str | None = None    # None = dense (all visual tokens)
    keep: float | None = None
    qa: bool = False
    blank: bool = False        # every image replaced by a blank one (FP dense only): what the text alone answers

    @property
    def kind(self) -> str:
        """fp-dense | fp-blank | q-dense | fp-host | q-host | q-qa"""
        if self.blank:
            return "fp-blank"
        if self.host is None:
            return "fp-dense" if self.quant is None else "q-dense"
        if self.quant is None:
            return "fp-qa" if self.qa else "fp-host"
        return "q-qa" if self.qa else "q-host"

    @property
    def label(self) -> str:
        q = "FP" if self.quant is None else self.quant.upper()
        if self.blank:
            return "FP dense, blank image"
        if self.host is None:
            return f"{q} dense"
        return f"{q} + {'QA-' if self.qa else ''}{self.host} @ {self.keep:g}"

    def prune_config(self, cfg: CompareConfig) -> PruneConfig | None:
        if self.host is None:
            return None
        # Options a row does not use keep their defaults, so changing e.g. alpha reruns only the QA rows.
        qa = {"alpha": cfg.alpha, "sensitivity": cfg.sensitivity, "bits": cfg.sens_bits,
              "group_size": cfg.sens_group_size} if self.qa else {}
        layer = {"layer_k": cfg.layer_k} if self.host == "fastv" else {}
        return PruneConfig(host=self.host, keep=self.keep, qa=self.qa, seed=cfg.seed, **qa, **layer)

    def eval_config(self, cfg: CompareConfig) -> EvalConfig:
        return EvalConfig(model=cfg.model, task=self.task, limit=cfg.limit, seed=cfg.seed, quant=self.quant,
                          calib_samples=cfg.calib_samples, prune=self.prune_config(cfg), mode=cfg.mode,
                          blank_image=self.blank,
                          max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                          dtype=cfg.dtype)

    def fingerprint(self, cfg: CompareConfig) -> dict:
        """Everything that changes this row's per-item results: the evaluation's resume key."""
        return self.eval_config(cfg).key()

    def config_id(self, cfg: CompareConfig) -> str:
        """Readable and unique: ``<task>__<quant>__<host[-qa]-k<keep>|dense>__<hash>``."""
        q = self.quant or "fp"
        p = "blank" if self.blank else "dense" if self.host is None else f"{self.host}{'-qa' if self.qa else ''}-k{self.keep:g}"
        return f"{slug(self.task)}__{slug(q)}__{p}__{config_hash(self.fingerprint(cfg))}"

    def to_dict(self) -> dict:
        return {**asdict(self), "kind": self.kind, "label": self.label}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")[:40] or "x"


def build_grid(cfg: CompareConfig) -> list[Row]:
    rows: list[Row] = []
    for task in cfg.tasks:
        rows.append(Row(task))
        if cfg.blank:
            rows.append(Row(task, blank=True))
        if cfg.fp_pruned:
            rows += [Row(task, None, h, k) for h in cfg.hosts for k in cfg.keeps]
        for q in cfg.quant:
            rows.append(Row(task, q))
            for h in cfg.hosts:
                for k in cfg.keeps:
                    rows += [Row(task, q, h, k, qa=False), Row(task, q, h, k, qa=True)]
    return rows
