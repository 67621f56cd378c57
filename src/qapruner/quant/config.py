"""Typed quantization configs and the preset grammar.

Preset grammar (case-insensitive, tokens separated by ``-``)::

    PRESET   := "fp" | BASE ( "-" MOD )*
    BASE     := "w" BITS "a" BITS            BITS in 2..8, or 16 (= off); e.g. w4a16, w8a8, w4a4, w16a4
    MOD      := "rtn" | "gptq"               weight method (default rtn)
              | "rot" | "rrot"               residual rotation: randomized Hadamard / random orthogonal (seeded QR)
              | "smooth" | "smooth" FLOAT    SmoothQuant migration, alpha default 0.5 (not with rot/rrot)
              | "tok" | "static"             activations: dynamic per token (default) / static per tensor
              | "ag" INT                     activations: dynamic per token, per group of INT channels
              | "g" INT                      weights: per group of INT input channels (default per output channel)
              | "kv" BITS                    KV-cache fake-quant (per head, per token, asymmetric)
              | "clip" | "noclip"            weight clipping-ratio search on / off (default)
              | "aclip" FLOAT                activation clip ratio for dynamic scales (default 1.0)
              | "symw" | "asymw"             weights symmetric (default) / asymmetric
              | "syma" | "asyma"             activations symmetric / asymmetric (default)

Defaults (GPTQ/QuaRot conventions where measurements agree): weights symmetric per output channel, no clip search (on SmolLM2 a plain
weight-MSE clip search *hurts* RTN: 32.5 -> 78.7 ppl at W4 per channel, see docs/quantization.md; with GPTQ
the search is weighted by diag(H)); activations asymmetric, dynamic per token (measured: W16A4 per token
416 ppl asymmetric vs 3387 symmetric on SmolLM2; a per-token zero point costs one row-sum correction). ``QuantConfig.preset`` gives back the canonical preset string
(defaults omitted, fixed modifier order), so ``from_preset(cfg.preset) == cfg``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from ..errors import QAPrunerError
from .quantizer import check_bits

Method = Literal["rtn", "gptq"]
Rotation = Literal["hadamard", "random"]
Granularity = Literal["token", "tensor", "group"]
WEIGHT_METHODS = get_args(Method)
ROTATIONS = (None, *get_args(Rotation))
ACT_GRANULARITIES = get_args(Granularity)

DEFAULT_INCLUDE = None  # None = the language model's decoder-layer linears (q, k, v, o, gate, up, down)


@dataclass(frozen=True)
class WeightQuantConfig:
    bits: int = 4
    sym: bool = True
    group_size: int | None = None  # None = per output channel
    clip_search: bool = False

    def __post_init__(self):
        check_bits(self.bits, "Weight bits")
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise QAPrunerError(f"Weight group size must be a positive integer or None, not {self.group_size!r}.")

    @property
    def enabled(self) -> bool:
        return self.bits < 16


@dataclass(frozen=True)
class ActQuantConfig:
    bits: int = 16
    sym: bool = False
    granularity: Granularity = "token"  # token (dynamic) | tensor (static, calibrated) | group (dynamic, per token)
    group_size: int | None = None  # only for granularity="group"
    clip_ratio: float = 1.0  # dynamic scales: range multiplied by this; static: upper bound of the MSE search

    def __post_init__(self):
        check_bits(self.bits, "Activation bits")
        if self.granularity not in ACT_GRANULARITIES:
            raise QAPrunerError(f"Activation granularity must be one of {ACT_GRANULARITIES}, not {self.granularity!r}.")
        if self.granularity == "group" and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise QAPrunerError("Activation granularity 'group' needs a positive group_size.")
        if not (0.0 < self.clip_ratio <= 1.0):
            raise QAPrunerError(f"Activation clip ratio must be in (0, 1], not {self.clip_ratio!r}.")

    @property
    def enabled(self) -> bool:
        return self.bits < 16


@dataclass(frozen=True)
class GPTQConfig:
    damp: float = 0.01  # fraction of mean(diag H) added to the diagonal
    block_size: int = 128  # lazy-batch block size
    act_order: bool = True  # process columns by decreasing diag(H)
    true_sequential: bool = True  # q/k/v -> o -> gate/up -> down, each on already-quantized predecessors


@dataclass(frozen=True)
class QuantConfig:
    weight: WeightQuantConfig = field(default_factory=WeightQuantConfig)
    act: ActQuantConfig = field(default_factory=ActQuantConfig)
    method: Method = "rtn"
    rotation: Rotation | None = None
    online_hadamard: bool = True  # with a rotation: online Hadamard before down_proj
    smooth: float | None = None  # SmoothQuant alpha, None = off
    kv_bits: int = 16
    gptq: GPTQConfig = field(default_factory=GPTQConfig)
    include: tuple[str, ...] | None = DEFAULT_INCLUDE  # glob patterns on module names (fnmatch)
    exclude: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self):
        if self.method not in WEIGHT_METHODS:
            raise QAPrunerError(f"Weight method must be one of {WEIGHT_METHODS}, not {self.method!r}.")
        if self.rotation not in ROTATIONS:
            raise QAPrunerError(f"Rotation must be one of {ROTATIONS}, not {self.rotation!r}.")
        if self.smooth is not None:
            if self.rotation is not None:
                raise QAPrunerError("SmoothQuant and rotation are alternatives; choose one of them.")
            if not (0.0 <= self.smooth <= 1.0):
                raise QAPrunerError(f"SmoothQuant alpha must be in [0, 1], not {self.smooth!r}.")
        check_bits(self.kv_bits, "KV-cache bits")

    # ------------------------------------------------------------------ helpers
    @property
    def needs_calibration(self) -> bool:
        return (
            (self.method == "gptq" and self.weight.enabled)
            or (self.act.enabled and self.act.granularity == "tensor")
            or self.smooth is not None
        )

    @property
    def is_noop(self) -> bool:
        return not (self.weight.enabled or self.act.enabled or self.kv_bits < 16 or self.rotation or self.smooth is not None)

    @classmethod
    def from_preset(cls, preset: str) -> "QuantConfig":
        return parse_preset(preset)

    @property
    def preset(self) -> str:
        return to_preset(self)


_FLOAT = r"(\d+(?:\.\d*)?|\.\d+)"


def _bits(text: str, preset: str) -> int:
    try:
        return check_bits(int(text))
    except QAPrunerError as exc:
        raise QAPrunerError(f"Bad quantization preset {preset!r}: {exc}") from None


def parse_preset(preset: str) -> QuantConfig:
    """Parse a preset string (grammar in this module's docstring) into a :class:`QuantConfig`."""
    if not isinstance(preset, str) or not preset.strip():
        raise QAPrunerError("The quantization preset is empty; use e.g. 'w4a16', 'w8a8' or 'w4a4-rot-gptq'.")
    text = preset.strip().lower()
    if text in ("fp", "fp32", "none", "w16a16"):
        return QuantConfig(weight=WeightQuantConfig(bits=16), act=ActQuantConfig(bits=16))
    parts = text.split("-")
    m = re.fullmatch(r"w(\d+)a(\d+)", parts[0])
    if not m:
        raise QAPrunerError(
            f"Bad quantization preset {preset!r}: it must start with w<bits>a<bits> (e.g. w4a4, w8a8, w4a16)."
        )
    w = dict(bits=_bits(m.group(1), preset))
    a = dict(bits=_bits(m.group(2), preset))
    q: dict = {}
    seen: set[str] = set()
    for tok in parts[1:]:
        key = re.sub(r"[\d.]+$", "", tok) or tok
        if key in seen or (key in ("rot", "rrot") and {"rot", "rrot"} & seen) or (
            key in ("tok", "static", "ag") and {"tok", "static", "ag"} & seen
        ) or (key in ("rtn", "gptq") and {"rtn", "gptq"} & seen) or (key in ("clip", "noclip") and {"clip", "noclip"} & seen) or (
            key in ("symw", "asymw") and {"symw", "asymw"} & seen) or (key in ("syma", "asyma") and {"syma", "asyma"} & seen):
            raise QAPrunerError(f"Bad quantization preset {preset!r}: modifier {tok!r} conflicts with an earlier one.")
        seen.add(key)
        if tok in ("rtn", "gptq"):
            q["method"] = tok
        elif tok == "rot":
            q["rotation"] = "hadamard"
        elif tok == "rrot":
            q["rotation"] = "random"
        elif re.fullmatch(r"smooth" + _FLOAT + "?", tok):
            num = tok[len("smooth"):]
            q["smooth"] = float(num) if num else 0.5
        elif tok == "tok":
            a["granularity"] = "token"
        elif tok == "static":
            a["granularity"] = "tensor"
        elif re.fullmatch(r"ag\d+", tok):
            a["granularity"], a["group_size"] = "group", int(tok[2:])
        elif re.fullmatch(r"g\d+", tok):
            w["group_size"] = int(tok[1:])
        elif re.fullmatch(r"kv\d+", tok):
            q["kv_bits"] = _bits(tok[2:], preset)
        elif tok == "clip":
            w["clip_search"] = True
        elif tok == "noclip":
            w["clip_search"] = False
        elif re.fullmatch(r"aclip" + _FLOAT, tok):
            a["clip_ratio"] = float(tok[5:])
        elif tok in ("symw", "asymw"):
            w["sym"] = tok == "symw"
        elif tok in ("syma", "asyma"):
            a["sym"] = tok == "syma"
        else:
            raise QAPrunerError(
                f"Bad quantization preset {preset!r}: unknown modifier {tok!r} (known: rtn, gptq, rot, rrot, "
                "smooth[A], tok, static, ag<N>, g<N>, kv<B>, clip, noclip, aclip<R>, symw, asymw, syma, asyma)."
            )
    try:
        return QuantConfig(weight=WeightQuantConfig(**w), act=ActQuantConfig(**a), **q)
    except QAPrunerError as exc:
        raise QAPrunerError(f"Bad quantization preset {preset!r}: {exc}") from None


def _num(x: float) -> str:
    return f"{x:g}"


def to_preset(cfg: QuantConfig) -> str:
    """Canonical preset string of ``cfg`` (only fields expressible in the grammar are encoded)."""
    parts = [f"w{cfg.weight.bits}a{cfg.act.bits}"]
    if cfg.rotation == "hadamard":
        parts.append("rot")
    elif cfg.rotation == "random":
        parts.append("rrot")
    if cfg.method != "rtn":
        parts.append(cfg.method)
    if cfg.smooth is not None:
        parts.append("smooth" if cfg.smooth == 0.5 else f"smooth{_num(cfg.smooth)}")
    if cfg.act.granularity == "tensor":
        parts.append("static")
    elif cfg.act.granularity == "group":
        parts.append(f"ag{cfg.act.group_size}")
    if cfg.weight.group_size is not None:
        parts.append(f"g{cfg.weight.group_size}")
    if cfg.kv_bits < 16:
        parts.append(f"kv{cfg.kv_bits}")
    if cfg.weight.clip_search:
        parts.append("clip")
    if cfg.act.clip_ratio != 1.0:
        parts.append(f"aclip{_num(cfg.act.clip_ratio)}")
    if not cfg.weight.sym:
        parts.append("asymw")
    if cfg.act.sym:
        parts.append("syma")
    return "-".join(parts)


__all__ = ["WeightQuantConfig", "ActQuantConfig", "GPTQConfig", "QuantConfig", "parse_preset", "to_preset", "replace"]
