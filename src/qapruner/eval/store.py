"""Per-item results as JSONL: one header line naming the configuration, then one line per finished item.
A rerun with the same configuration skips finished items; a different configuration refuses the file.

One writer at a time: an ``ItemStore`` holds an exclusive lock on the sibling file ``FILE.lock`` from its
construction until ``close()`` (or the end of a ``with`` block); a second store on the same file is refused.
The lock file is left in place (removing it would let two writers lock different files).

Damage an interrupted run can leave is repaired on open: a first line cut short with no rows after it is
rewritten, and a last line cut short (no newline yet) is truncated away, so that item is recomputed. A uid
that appears twice counts once (the first row written).

A multi-process run (docs/parallel.md) writes one shard file per process next to the items file,
``FILE.shard-<rank>``, in the same format, without a lock of its own (the main process holds the items file's
lock meanwhile); ``merge_shards`` appends their rows to the items file, in item order, and deletes them. Any
store that opens the items file merges shards a killed run left behind, whatever the process count."""

from __future__ import annotations

import fcntl
import glob
import json
import os
from pathlib import Path

from ..errors import QAPrunerError


def _cannot_write(path: Path, exc: OSError) -> QAPrunerError:
    reason = exc.strerror or str(exc)
    return QAPrunerError(f"Cannot write '{path}': {reason[:1].lower() + reason[1:]}.")


def _json_object(line: str) -> dict | None:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _read(path: Path) -> tuple[dict | None, dict[str, dict], int]:
    """(header, or None for a missing/empty file or a torn header with no rows after it; {uid: row}, first row
    of a uid wins; byte length of the complete, newline-terminated lines)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, {}, 0
    end = data.rfind(b"\n") + 1  # anything after the last newline was cut short by an interruption
    lines = data[:end].decode(errors="replace").splitlines()
    header = _json_object(lines[0]) if lines else None
    if header is None or "config" not in header:
        if any(line.strip() for line in lines[1:]):
            raise QAPrunerError(f"The first line of '{path}' (its configuration header) is unreadable; "
                                "delete the file and rerun.")
        return None, {}, 0
    rows: dict[str, dict] = {}
    for n, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        row = _json_object(line)
        if row is None or "uid" not in row:
            raise QAPrunerError(f"Line {n} of '{path}' is not a readable result row; delete the file and rerun.")
        rows.setdefault(row["uid"], row)
    return header, rows, end


def check_config(path, config: dict) -> None:
    """Refuse now, before a model is loaded or quantized, an items file that holds another configuration's
    results (``ItemStore`` checks again under its lock)."""
    header = _read(Path(path))[0]
    if header is not None and header["config"] != json.loads(json.dumps(config)):
        raise _other_config(Path(path))


def is_complete(path, config: dict, uids: list[str]) -> bool:
    """Whether the items file holds ``config``'s rows of every uid in ``uids`` and no shard a killed multi-process
    run left behind: then a rerun has nothing to compute, and need not load a quantized model."""
    path = Path(path)
    header, rows, _ = _read(path)
    if header is None or header["config"] != json.loads(json.dumps(config)):
        return False
    return not glob.glob(glob.escape(path.name) + ".shard-*", root_dir=path.parent) and all(u in rows for u in uids)


def _other_config(path: Path) -> QAPrunerError:
    return QAPrunerError(f"'{path}' holds results of a different configuration; remove it or choose another --out.")


def read_items(path) -> list[dict]:
    """The finished rows of an items file, one per uid (the first written), without the header. Takes no lock."""
    return list(_read(Path(path))[1].values())


class ItemStore:
    """``done``: {uid: row} of the finished items. Use as a context manager, or call ``close()``, to release
    the lock; it is also released when the object is garbage-collected. ``lock=False``: no lock of its own (a
    shard file, written under the lock its items file's store holds)."""

    def __init__(self, path: Path, config: dict, lock: bool = True):
        self._lock = None
        self._locking = lock
        self.path, self.config = Path(path), config
        self.done: dict[str, dict] = {}
        try:
            self._open()
        except OSError as exc:
            self.close()
            raise _cannot_write(self.path, exc) from None
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._locking:
            self._lock = open(self.path.with_name(self.path.name + ".lock"), "a")
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise QAPrunerError(f"Another qapruner run is writing '{self.path}'; wait for it or choose another "
                                    "--out.") from None
        header, rows, end = _read(self.path)
        if header is None:
            self.path.write_text(json.dumps({"config": self.config}) + "\n")
            return
        if header["config"] != self.config:
            raise _other_config(self.path)
        if self.path.stat().st_size > end:
            os.truncate(self.path, end)
        self.done = rows

    def add(self, rows: list[dict]) -> None:
        try:
            with self.path.open("a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in rows))
        except OSError as exc:
            raise _cannot_write(self.path, exc) from None
        for r in rows:
            self.done.setdefault(r["uid"], r)

    def close(self) -> None:
        """Release the lock (closing the lock file releases the flock)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "ItemStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def shard_path(path: Path, rank: int) -> Path:
    """The shard file of process ``rank`` of a multi-process run writing the items file ``path``."""
    path = Path(path)
    return path.with_name(f"{path.name}.shard-{rank}")


def merge_shards(store: ItemStore, order: list[str]) -> int:
    """Append the rows of ``store``'s shard files that it lacks (the first row of a uid wins), sorted by their
    place in ``order`` (the task's uids; unknown uids last), then delete the shards. Returns the rows added."""
    files = sorted(store.path.parent.glob(glob.escape(store.path.name) + ".shard-*"))
    rows: dict[str, dict] = {}
    for f in files:
        header, shard_rows, _ = _read(f)
        if header is None:
            continue
        if header["config"] != store.config:
            raise QAPrunerError(f"'{f}' holds results of a different configuration; remove it or choose another "
                                "--out.")
        for uid, row in shard_rows.items():
            if uid not in store.done:
                rows.setdefault(uid, row)
    place = {uid: i for i, uid in enumerate(order)}
    new = sorted(rows.values(), key=lambda r: place.get(r["uid"], len(place)))
    if new:
        store.add(new)
    for f in files:
        f.unlink(missing_ok=True)
    return len(new)
