"""CompareConfig: the whole experiment as data (a TOML/JSON recipe), overridable from the command line."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import QAPrunerError
from ..models.assets import canonical_model
from ..prune.config import HOSTS, SENSITIVITIES

DEFAULT_TASKS = ("easy-vqa", "fashion-mnist")
DEFAULT_KEEPS = (0.5, 0.25, 0.125)
PAPER_KEEP = 0.125  # the paper keeps 32 of 256 (LLaVA-1.3) = 12.5 %; 64 of 576 (LLaVA-1.5) = 11.1 %


def _split(value, what: str) -> list[str]:
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    elif isinstance(value, (list, tuple)):
        parts = [str(p).strip() for p in value]
    else:
        raise QAPrunerError(f"{what} must be a comma-separated string or a list, got {value!r}.")
    parts = [p for p in parts if p]
    if not parts:
        raise QAPrunerError(f"{what} is empty.")
    if len(set(parts)) != len(parts):
        raise QAPrunerError(f"{what} lists an entry twice: {', '.join(parts)}.")
    return parts


@dataclass
class CompareConfig:
    model: str = "testbed"
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    quant: list[str] = field(default_factory=lambda: ["w4a4"])   # one or more presets (bits × keep grid)
    hosts: list[str] = field(default_factory=lambda: list(HOSTS))
    keeps: list[float] = field(default_factory=lambda: list(DEFAULT_KEEPS))
    alpha: float | str = 0.7           # weight of the host score, or "dynamic"
    # S^Q of the QA rows, one or more (a sweep: one QA row per choice): paper (simulated INT{sens_bits}/
    # G{sens_group_size}), matched (the deployed quantizer's error), norm (the authors' released L2-norm score)
    sensitivity: list[str] = field(default_factory=lambda: ["paper"])
    sens_bits: int = 4
    sens_group_size: int = 128
    layer_k: int = 2                   # FastV pruning layer
    relevance: str = "llm"             # CDPruner's relevance: llm | clip:MODEL (prune/hosts/cdpruner.py)
    limit: int | None = None
    seed: int = 0
    out: str = "runs/compare"
    fp_pruned: bool = True             # FP + host reference rows
    blank: bool = True                 # FP dense on a blank image: the blind baseline and the image-dependent items
    mode: str = "choice"               # choice | generate (greedy)
    max_new_tokens: int = 10
    batch_size: int = 16
    calib_samples: int = 32
    calib_seed: int | None = None      # which calibration items (None: `seed`); varying it alone gives another
                                       # quantized copy of each calibrating preset on the same items
    calibration: str = "per-task"      # per-task: a calibrating preset (GPTQ, static scales) is quantized once per
                                       # task, on its training split; shared: once per preset, on all the tasks'
                                       # training splits (calib_samples shared out), like one deployed model
    prune_calibration: bool = False    # also run every Wq + host / QA-host row of a calibrating preset on a model
                                       # calibrated on that row's pruned token sets (not fastv, not matched S^Q)
    dtype: str = "float32"             # float32 | bfloat16 (FP and weight-only presets; see EvalConfig)
    gemm: str = "float"                # float | integer: how W·A fake-quant rows multiply (EvalConfig.gemm)
    bootstrap_reps: int = 10000
    gallery: int = 4                   # images in the gallery (0: none)
    notes: str = ""                    # free text copied into the report (e.g. how a recipe maps to the paper)

    def __post_init__(self) -> None:
        self.model = canonical_model(self.model)
        self.tasks = _split(self.tasks, "tasks")
        self.quant = [q.lower() for q in _split(self.quant, "quant")]
        if any(q in ("fp", "none", "fp16", "fp32") for q in self.quant):
            raise QAPrunerError("--quant lists presets to compare against FP; FP dense and FP + host rows are always "
                                "included, so leave 'fp' out.")
        self.hosts = [h.lower() for h in _split(self.hosts, "hosts")]
        for h in self.hosts:
            if h not in HOSTS:
                raise QAPrunerError(f"Unknown pruning host {h!r}; choose from {', '.join(HOSTS)}.")
        try:
            self.keeps = [float(k) for k in _split(self.keeps, "keeps")]
        except ValueError:
            raise QAPrunerError(f"--keeps must be numbers in (0, 1), got {self.keeps!r}.") from None
        for k in self.keeps:
            if not (0.0 < k < 1.0):
                raise QAPrunerError(f"Keep ratios must be in (0, 1) (1 is the dense row), got {k}.")
        self.keeps = sorted(set(self.keeps), reverse=True)
        if isinstance(self.alpha, str) and self.alpha.lower() != "dynamic":
            try:
                self.alpha = float(self.alpha)
            except ValueError:
                raise QAPrunerError(f"--alpha must be a number in [0, 1] or 'dynamic', got {self.alpha!r}.") from None
        if isinstance(self.alpha, str):
            self.alpha = "dynamic"
        elif not 0.0 <= float(self.alpha) <= 1.0:
            raise QAPrunerError(f"--alpha must be in [0, 1] or 'dynamic', got {self.alpha}.")
        self.sensitivity = [x.lower() for x in _split(self.sensitivity, "sensitivity")]
        for x in self.sensitivity:
            if x not in SENSITIVITIES:
                raise QAPrunerError(f"--sensitivity must be one or more of {', '.join(SENSITIVITIES)}, got {x!r}.")
        if not isinstance(self.relevance, str) or not (self.relevance == "llm" or self.relevance.startswith("clip:")
                                                       and len(self.relevance) > 5):
            raise QAPrunerError(f"--relevance must be 'llm' or 'clip:MODEL', got {self.relevance!r}.")
        if self.calibration not in ("per-task", "shared"):
            raise QAPrunerError(f"calibration must be 'per-task' or 'shared', got {self.calibration!r}.")
        if self.gemm not in ("float", "integer"):
            raise QAPrunerError(f"--gemm must be 'float' or 'integer', got {self.gemm!r}.")
        if self.gemm == "integer":
            from ..quant import QuantConfig
            from ..quant.integer_gemm import integer_gemm_refusal

            for q in self.quant:
                reason = integer_gemm_refusal(QuantConfig.from_preset(q))
                if reason is not None:
                    raise QAPrunerError(reason)
        if self.mode not in ("choice", "generate"):
            raise QAPrunerError(f"--mode must be 'choice' or 'generate', got {self.mode!r}.")
        if self.limit is not None and int(self.limit) <= 0:
            raise QAPrunerError(f"--limit must be a positive number of items, got {self.limit}.")
        for name in ("batch_size", "bootstrap_reps", "sens_bits", "sens_group_size"):
            if int(getattr(self, name)) < 1:
                raise QAPrunerError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if self.gallery < 0 or self.calib_samples < 0:
            raise QAPrunerError("gallery and calib_samples must be non-negative.")

    @property
    def gallery_sensitivity(self) -> str:
        """The S^Q drawn in the gallery (and used by its QA-host picture): the first one swept."""
        return self.sensitivity[0]

    @property
    def paper_keep(self) -> float:
        """The keep ratio of the Table-1 columns: 12.5 % when swept, else the smallest ratio swept."""
        return PAPER_KEEP if PAPER_KEEP in self.keeps else min(self.keeps)

    @property
    def calibration_seed(self) -> int:
        """The seed that draws the calibration items."""
        return self.seed if self.calib_seed is None else self.calib_seed

    def to_dict(self) -> dict:
        return asdict(self)


KEYS = {f.name for f in fields(CompareConfig)}

# `qapruner compare` without --config: the demo's grid (configs/demo.toml; ~8 min on 2 CPU cores from an empty
# cache), not the many-hour full grid of the defaults above
DEMO = {"tasks": ["shapes", "easy-vqa", "fashion-mnist"], "limit": 24, "quant": ["w4a4-rot-gptq"],
        "calibration": "shared", "calib_samples": 16, "hosts": ["cls", "cdpruner"], "keeps": [0.125],
        "fp_pruned": False}


def swept_sensitivities(config: dict) -> list[str]:
    """The sensitivities of a results.json ``config`` (reports made before the sweep hold one string)."""
    s = config.get("sensitivity", "paper")
    return [s] if isinstance(s, str) else list(s)


def load_config_file(path: str | Path) -> dict:
    """A recipe: a flat TOML or JSON table whose keys are CompareConfig fields (``-`` or ``_``)."""
    path = Path(path)
    if not path.is_file():
        raise QAPrunerError(f"Config file '{path}' does not exist.")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        elif path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            raise QAPrunerError(f"Config file '{path}' must end in .toml or .json.")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise QAPrunerError(f"Cannot parse config file '{path}': {exc}") from None
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise QAPrunerError(f"Config file '{path}' has unknown keys {', '.join(unknown)}; known: {', '.join(sorted(KEYS))}.")
    return data


def resolve(file_values: dict, cli_values: dict) -> CompareConfig:
    """Defaults < config file < options given on the command line (``None`` = not given)."""
    merged = dict(file_values)
    merged.update({k: v for k, v in cli_values.items() if v is not None})
    return CompareConfig(**merged)
