"""``EvalConfig``: one evaluation, fully resolved and validated once.

Its ``key()`` is what decides whether stored per-item results may be reused (resume): it is derived from
every field, so an option added here is in the key unless it is listed in ``NOT_IN_KEY`` with the reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar, Literal

from ..errors import QAPrunerError
from ..models.assets import canonical_model
from ..prune import PruneConfig
from ..quant import QuantConfig

Mode = Literal["choice", "generate"]
MODES = ("choice", "generate")
Dtype = Literal["float32", "bfloat16"]
DTYPES = ("float32", "bfloat16")
Gemm = Literal["float", "integer"]
GEMMS = ("float", "integer")


@dataclass(frozen=True)
class EvalConfig:
    model: str = "testbed"
    task: str = "easy-vqa"
    limit: int | None = None  # a fixed, seeded, answer-stratified subset; None = every item
    seed: int = 0  # subset, calibration sample and random host
    blank_image: bool = False  # every image replaced by a blank one (the blind baseline)
    quant: QuantConfig | None = None  # None = FP
    calib_samples: int = 32  # calibration items (GPTQ, static scales, SmoothQuant)
    calib_seed: int | None = None  # which calibration items; None = `seed` (vary it alone: another quantized copy)
    calib_tasks: tuple[str, ...] | None = None  # calibrate on these tasks' training splits together; None = `task`'s
    calib_pruned: bool = False  # calibrate on the token sets `prune` keeps (prune-aware calibration), not all tokens
    prune: PruneConfig | None = None  # None = all visual tokens
    mode: Mode = "choice"  # choice: next-token likelihood over candidates; generate: greedy decode + parse
    max_new_tokens: int = 10  # generate mode
    dtype: Dtype = "float32"  # the language model's (and projector's) execution dtype; the vision features stay fp32
    real: bool = False  # real kernels (deploy.runtime: int4 tinygemm, int8 dynamic, bf16) instead of fake-quant
    # how a fake-quant W·A linear multiplies: "float" (dequantized operands, fp32 GEMM) or "integer" (the same
    # codes in an exact int8 GEMM, scaled after; quant.integer_gemm)
    gemm: Gemm = "float"
    batch_size: int = 16
    # Fields that cannot change a prediction, with the reason (none: batch_size can, see key()):
    NOT_IN_KEY: ClassVar[dict[str, str]] = {}

    def __post_init__(self):
        object.__setattr__(self, "model", canonical_model(self.model))  # "testbed" names its asset in the key
        if isinstance(self.quant, str):
            object.__setattr__(self, "quant", QuantConfig.from_preset(self.quant))
        if self.calib_tasks is not None:
            object.__setattr__(self, "calib_tasks", tuple(self.calib_tasks))
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit <= 0):
            raise QAPrunerError(f"--limit must be a positive number of items, got {self.limit}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise QAPrunerError(f"--seed must be a non-negative integer, got {self.seed!r}.")
        c = self.calib_seed
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 0):
            raise QAPrunerError(f"--calib-seed must be a non-negative integer, got {c!r}.")
        if self.mode not in MODES:
            raise QAPrunerError(f"Unknown --mode '{self.mode}'; choose 'choice' or 'generate'.")
        for name in ("batch_size", "calib_samples", "max_new_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise QAPrunerError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}.")
        if self.dtype not in DTYPES:
            raise QAPrunerError(f"Unknown --dtype '{self.dtype}'; choose 'float32' or 'bfloat16'.")
        if self.gemm not in GEMMS:
            raise QAPrunerError(f"Unknown --gemm '{self.gemm}'; choose 'float' or 'integer'.")
        if self.gemm == "integer":
            from ..quant.integer_gemm import integer_gemm_refusal

            reason = integer_gemm_refusal(self.quant)
            if reason is not None:
                raise QAPrunerError(reason)
            if self.real:
                raise QAPrunerError("--gemm integer speeds up the simulation; --real runs other kernels: pick one.")
        if self.real:
            object.__setattr__(self, "dtype", "bfloat16")  # the real kernels take bf16 activations
            from ..deploy.runtime import check_real

            check_real(self.quant, self.preset)
        elif self.dtype != "float32" and self.quant is not None and self.quant.act.enabled:
            raise QAPrunerError(f"--dtype {self.dtype} runs FP and weight-only presets only: {self.preset} quantizes "
                                "activations, whose fake-quant grid is simulated in float32.")
        if self.prune is not None and self.prune.is_noop:
            object.__setattr__(self, "prune", None)  # keep 1.0 is dense
        if self.calib_pruned:
            from .prepare import check_calib_prune

            if self.prune is None or self.quant is None or not self.quant.needs_calibration:
                raise QAPrunerError("--calib-pruned needs a pruning host (--prune, keep < 1) and a preset that "
                                    f"calibrates (GPTQ, static scales or SmoothQuant); {self.preset or 'FP'} "
                                    f"{'with' if self.prune else 'without'} pruning has nothing to calibrate on "
                                    "pruned tokens.")
            check_calib_prune(self.prune)
        if self.prune is not None and self.prune.host == "fastv" and self.mode != "choice":
            raise QAPrunerError("In-LLM (fastv) pruning supports --mode choice only.")

    def check_model(self, adapter) -> None:
        """Checks that need the loaded model; run them before anything is computed or written."""
        p = self.prune
        if p is not None and p.host == "fastv" and not 0 <= p.layer_k < adapter.num_layers:
            raise QAPrunerError(f"--layer-k {p.layer_k} is outside the model's {adapter.num_layers} decoder layers "
                                f"(0..{adapter.num_layers - 1}).")

    @property
    def calibration_seed(self) -> int:
        """The seed that draws the calibration items."""
        return self.seed if self.calib_seed is None else self.calib_seed

    @property
    def preset(self) -> str | None:
        """The quantization preset as the user gave it (canonical form), or None for FP."""
        return self.quant.preset if self.quant is not None else None

    def describe(self) -> dict:
        """The configuration as plain JSON values (quant as its preset string, prune as a dict)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "quant":
                v = self.preset
            elif f.name == "prune":
                v = asdict(v) if v is not None else None
            out[f.name] = v
        return out

    def key(self) -> dict:
        """Everything that can change a prediction (see ``NOT_IN_KEY``); options a run does not use are
        normalised, so e.g. calibration size does not split FP runs."""
        d = {k: v for k, v in self.describe().items() if k not in self.NOT_IN_KEY}
        if self.quant is None or not self.quant.needs_calibration:
            d["calib_samples"] = d["calib_tasks"] = d["calib_seed"] = None
        if d["calib_seed"] is None or d["calib_seed"] == self.seed:
            del d["calib_seed"]  # the subset's seed draws the calibration: the key of runs made before the option
        if d["batch_size"] == 16:
            # Left padding with mask-derived positions keeps a row's answer nearly independent of its batch, but not
            # exactly: the padded shapes change float sums by ~1e-7, which can flip a near-tie under activation
            # quantization (measured: 2 of 48 testbed answers between batch 8 and 16). So the batch size is in the
            # key; the default 16 is left out, the value every run made before this change used.
            del d["batch_size"]
        if d["gemm"] == "float":
            del d["gemm"]  # the fp32 GEMM: the key of runs made before the option
        if not d["calib_pruned"]:
            del d["calib_pruned"]  # dense calibration: the key of runs made before the option
        if d["calib_tasks"] is None:
            del d["calib_tasks"]  # calibrated on the task itself: the key of runs made before the option
        else:
            d["calib_tasks"] = list(d["calib_tasks"])  # as a stored header reads it back (JSON has no tuples)
        if self.mode != "generate":
            d["max_new_tokens"] = None
        if d["prune"] is not None and d["prune"].get("relevance") == "llm":
            del d["prune"]["relevance"]  # the default, and runs made before the option existed keep their key
        return d


__all__ = ["EvalConfig", "Mode", "MODES", "Dtype", "DTYPES", "Gemm", "GEMMS"]
