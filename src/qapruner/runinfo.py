"""What a report records about the run itself: the environment, stable short hashes of configurations, and
progress that shows both in a terminal (bars) and in a log (one line per finished piece of work)."""

from __future__ import annotations

import hashlib
import json
import platform

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def cpu_capability() -> str | None:
    """The CPU kernels torch dispatches to ("AVX2", "AVX512", ...); None where a GPU runs the model."""
    return None if torch.cuda.is_available() else torch.backends.cpu.get_cpu_capability()


def environment() -> dict:
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "machine": platform.machine(), "cpu_threads": torch.get_num_threads(),
            # the CPU kernels torch dispatches to (AVX2 / AVX512 ...): float results and timings depend on it
            "cpu_capability": cpu_capability(),
            "device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


def config_hash(obj) -> str:
    """10 hex digits of the SHA-1 of ``obj`` as sorted JSON."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn())
