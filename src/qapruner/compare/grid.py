"""The rows of the comparison and their stable ids.

Per task: FP dense; FP dense on a blank image (the blind baseline, unless ``blank`` is off); FP + host at every
keep (reference, unless ``fp_pruned`` is off); and per quantization preset: Wq dense, Wq + host and Wq + QA-host
at every keep, one QA-host row per sensitivity swept; with ``prune_calibration`` each Wq + host and Wq + QA-host
row of a calibrating preset gets a twin whose model is calibrated on that row's pruned token sets. All rows of a
task score the same items.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from ..eval.config import EvalConfig
from ..prune import PruneConfig
from ..quant import QuantConfig
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
    sensitivity: str | None = None  # S^Q of a QA row (paper | matched | norm); None for every other row
    calib_pruned: bool = False  # the quantized model is calibrated on this row's pruned token sets

    def __post_init__(self) -> None:
        if self.qa and self.sensitivity is None:
            object.__setattr__(self, "sensitivity", "paper")
        elif not self.qa and self.sensitivity is not None:
            object.__setattr__(self, "sensitivity", None)

    @property
    def kind(self) -> str:
        """fp-dense | fp-blank | q-dense | fp-host | q-host | q-qa, and q-host-pc | q-qa-pc (prune-calibrated)"""
        if self.calib_pruned:
            return "q-qa-pc" if self.qa else "q-host-pc"
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
        pc = ", calibrated on pruned tokens" if self.calib_pruned else ""
        return f"{q} + {qa_name(self.sensitivity) if self.qa else ''}{self.host} @ {self.keep:g}{pc}"

    def prune_config(self, cfg: CompareConfig) -> PruneConfig | None:
        if self.host is None:
            return None
        # Options a row does not use keep their defaults, so changing e.g. alpha reruns only the QA rows.
        qa = {"alpha": cfg.alpha, "sensitivity": self.sensitivity, "bits": cfg.sens_bits,
              "group_size": cfg.sens_group_size} if self.qa else {}
        layer = {"layer_k": cfg.layer_k} if self.host == "fastv" else {}
        relevance = {"relevance": cfg.relevance} if self.host == "cdpruner" else {}
        return PruneConfig(host=self.host, keep=self.keep, qa=self.qa, seed=cfg.seed, **qa, **layer, **relevance)

    def eval_config(self, cfg: CompareConfig) -> EvalConfig:
        shared = tuple(cfg.tasks) if cfg.calibration == "shared" and self.quant is not None else None
        return EvalConfig(model=cfg.model, task=self.task, limit=cfg.limit, seed=cfg.seed, quant=self.quant,
                          calib_samples=cfg.calib_samples, calib_seed=cfg.calib_seed, calib_tasks=shared,
                          prune=self.prune_config(cfg), mode=cfg.mode,
                          blank_image=self.blank, calib_pruned=self.calib_pruned,
                          max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                          dtype=cfg.dtype, gemm=cfg.gemm if self.quant is not None else "float")

    def fingerprint(self, cfg: CompareConfig) -> dict:
        """Everything that changes this row's per-item results: the evaluation's resume key."""
        return self.eval_config(cfg).key()

    def config_id(self, cfg: CompareConfig) -> str:
        """Readable and unique: ``<task>__<quant>__<host[-qa[-<sensitivity>]]-k<keep>|dense|blank>__<hash>`` (the
        paper's sensitivity is not named, so ids of runs made before the sweep existed stay valid)."""
        q = self.quant or "fp"
        qa = "" if not self.qa else "-qa" if self.sensitivity == "paper" else f"-qa-{self.sensitivity}"
        p = "blank" if self.blank else "dense" if self.host is None else f"{self.host}{qa}-k{self.keep:g}"
        p += "-pcal" if self.calib_pruned else ""
        return f"{slug(self.task)}__{slug(q)}__{p}__{config_hash(self.fingerprint(cfg))}"

    def to_dict(self) -> dict:
        return {**asdict(self), "kind": self.kind, "label": self.label}


def qa_name(sensitivity: str | None) -> str:
    """``QA-`` for the paper's S^Q, ``QA(norm)-`` / ``QA(matched)-`` for the others (labels and table headers)."""
    return "QA-" if sensitivity in (None, "paper") else f"QA({sensitivity})-"


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
                    rows.append(Row(task, q, h, k))
                    rows += [Row(task, q, h, k, qa=True, sensitivity=x) for x in cfg.sensitivity]
            if cfg.prune_calibration and QuantConfig.from_preset(q).needs_calibration:
                rows += [Row(task, q, h, k, qa=qa, sensitivity=x, calib_pruned=True) for h in cfg.hosts for k in cfg.keeps
                         if h != "fastv" for qa, x in [(False, None)] + [(True, x) for x in cfg.sensitivity]
                         if x != "matched"]  # both need the quantized model before it exists (eval.prepare)
    return rows


def model_key(row: Row, cfg: CompareConfig, calibrates: bool) -> tuple:
    """Rows with equal keys run on one quantized copy: (preset, calibration task or None when shared / not
    calibrated, the pruning the calibration saw or None)."""
    if row.quant is None:
        return (None, None, None)
    task = row.task if calibrates and cfg.calibration != "shared" else None
    prune = row.prune_config(cfg) if row.calib_pruned else None
    return (row.quant, task, None if prune is None else tuple(sorted(asdict(prune).items())))
