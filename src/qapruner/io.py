"""Files a run writes: atomic JSON. (Per-item JSONL records are ``eval.store``'s format.)"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import QAPrunerError


def write_json(path: str | Path, obj) -> None:
    """Write atomically, so an interrupted run never leaves a half-written file behind."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(obj, indent=1) + "\n")
        tmp.replace(path)
    except OSError as exc:
        raise QAPrunerError(f"Cannot write {path}: {exc.strerror or exc}.") from None
