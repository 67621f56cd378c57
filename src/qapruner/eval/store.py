"""Per-item results as JSONL: one header line naming the configuration, then one line per finished item.
A rerun with the same configuration skips finished items; a different configuration refuses the file."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import QAPrunerError


class ItemStore:
    def __init__(self, path: Path, config: dict):
        self.path, self.config = Path(path), config
        self.done: dict[str, dict] = {}
        if self.path.exists() and self.path.stat().st_size:
            lines = self.path.read_text().splitlines()
            header = json.loads(lines[0])
            if header.get("config") != config:
                raise QAPrunerError(
                    f"'{self.path}' holds results of a different configuration; remove it or choose another --out.")
            for line in lines[1:]:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut short by an interruption: recompute from here
                self.done[row["uid"]] = row
            self._rewrite()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"config": config}) + "\n")

    def _rewrite(self) -> None:
        rows = [json.dumps({"config": self.config})] + [json.dumps(r) for r in self.done.values()]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("\n".join(rows) + "\n")
        tmp.replace(self.path)

    def add(self, rows: list[dict]) -> None:
        with self.path.open("a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
                self.done[r["uid"]] = r
