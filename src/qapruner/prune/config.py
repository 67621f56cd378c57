"""PruneConfig: what to prune, how much, and whether the selection is quantization-aware."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

from qapruner.errors import QAPrunerError
from qapruner.prune.hosts import HOSTS

Sensitivity = Literal["paper", "matched", "norm"]
SENSITIVITIES = get_args(Sensitivity)


def num_keep(keep: float, n: int) -> int:
    """Tokens kept out of ``n`` at ratio ``keep``: ``n`` when keep >= 1, else ``max(1, round(keep * n))``.

    ``round`` is Python's (ties to even), as in the interface contract; the eval runner should call this
    function rather than re-deriving the count.
    """
    if keep >= 1.0:
        return n
    return min(n, max(1, round(keep * n)))


@dataclass
class PruneConfig:
    host: str  # a registered host: random | uniform | cls | fastv | divprune | cdpruner
    keep: float  # ratio in (0, 1]; 1.0 keeps everything
    qa: bool = False  # quantization-aware variant (fuse the host score with S^Q)
    alpha: float | str = 0.7  # weight of the host score, float in [0, 1] or "dynamic"
    # "paper": simulated INT{bits}/G{group_size} error and span; "matched": ctx.matched_error; "norm": the
    # authors' released L2-norm score (sensitivity.norm_sensitivity)
    sensitivity: Sensitivity = "paper"
    bits: int = 4
    group_size: int = 128
    layer_k: int = 2  # LLM layer whose input is pruned in the in-LLM (FastV) location
    # CDPruner's relevance: "llm" (LLM input space; the testbed has no text tower) or "clip:MODEL" (a local path or
    # hub id of the CLIP whose vision tower the model uses: CDPruner's own relevance, hosts/cdpruner.py)
    relevance: str = "llm"
    seed: int = 0  # for the random host

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or self.host.lower() not in HOSTS:
            raise QAPrunerError(f"Unknown pruning host {self.host!r}; choose one of {', '.join(HOSTS)}.")
        self.host = self.host.lower()
        if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)):
            raise QAPrunerError(f"Keep ratio must be a number in (0, 1], got {self.keep!r}.")
        if not math.isfinite(self.keep) or not 0 < self.keep <= 1:
            raise QAPrunerError(f"Keep ratio must be a number in (0, 1], got {self.keep!r}.")
        if isinstance(self.alpha, str):
            if self.alpha.lower() != "dynamic":
                try:
                    self.alpha = float(self.alpha)
                except ValueError:
                    raise QAPrunerError(
                        f"Alpha must be a number in [0, 1] or 'dynamic', got {self.alpha!r}."
                    ) from None
            else:
                self.alpha = "dynamic"
        if not isinstance(self.alpha, str):
            if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
                raise QAPrunerError(f"Alpha must be a number in [0, 1] or 'dynamic', got {self.alpha!r}.")
            if not (0.0 <= float(self.alpha) <= 1.0):  # also rejects NaN
                raise QAPrunerError(f"Alpha must be in [0, 1] or 'dynamic', got {self.alpha!r}.")
            self.alpha = float(self.alpha)
        if self.sensitivity not in SENSITIVITIES:
            raise QAPrunerError(
                f"Unknown sensitivity {self.sensitivity!r}; choose 'paper' (simulated INT{{bits}}/G{{group}}), "
                "'matched' (error supplied by the deployed quantizer) or 'norm' (the released L2-norm score)."
            )
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not (2 <= self.bits <= 16):
            raise QAPrunerError(f"Sensitivity bits must be an integer in [2, 16], got {self.bits!r}.")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
            raise QAPrunerError(f"Sensitivity group size must be a positive integer, got {self.group_size!r}.")
        if isinstance(self.layer_k, bool) or not isinstance(self.layer_k, int) or self.layer_k < 0:
            raise QAPrunerError(f"Pruning layer K must be a non-negative integer, got {self.layer_k!r}.")
        if self.host == "fastv" and self.layer_k < 1:
            raise QAPrunerError("FastV ranks the visual tokens by the attention of layer K - 1 and prunes the input "
                                f"of layer K, so K must be at least 1, got {self.layer_k}.")
        if not isinstance(self.relevance, str) or not (self.relevance == "llm" or self.relevance.startswith("clip:")
                                                       and len(self.relevance) > 5):
            raise QAPrunerError(f"Relevance must be 'llm' or 'clip:MODEL' (a CLIP path or hub id), got {self.relevance!r}.")
        if self.relevance != "llm" and self.host != "cdpruner":
            raise QAPrunerError(f"--relevance {self.relevance} is CDPruner's instruction relevance; the {self.host} "
                                "host does not use one.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise QAPrunerError(f"Seed must be an integer, got {self.seed!r}.")

    @property
    def clip_model(self) -> str | None:
        """The CLIP model of ``relevance = "clip:MODEL"``, else None."""
        return self.relevance[len("clip:"):] if self.relevance.startswith("clip:") else None

    @property
    def is_noop(self) -> bool:
        return self.keep >= 1.0
