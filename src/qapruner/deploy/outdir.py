"""Writing an export directory atomically: everything goes to a temporary directory next to the target, which
is renamed into place only once complete; on any failure (or Ctrl-C) the temporary directory is removed and
the target is left as it was."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..errors import QAPrunerError

MARKER = "qapruner.json"  # every export holds it; --force only replaces a directory that does


def check_out_dir(out: str | Path, force: bool = False) -> Path:
    """Fail now, in one sentence, if ``out`` cannot receive an export (before any model is loaded)."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise QAPrunerError(f"Cannot write the export to {out}: it is a file, not a directory.")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise QAPrunerError(f"Output directory {out} exists and is not empty; pass --force to replace it.")
        if not (out / MARKER).is_file():
            raise QAPrunerError(f"Output directory {out} is not a qapruner export (it has no {MARKER}); "
                                "--force only replaces an earlier export.")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise QAPrunerError(f"Cannot write the export to {out}: {parent} is not a writable directory.")
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _normalise_modes(root: Path) -> None:
    """Temporary directories are private (0700) and some writers create 0600 files: give the export the
    modes a plain ``mkdir`` / ``open`` would have."""
    mask = _umask()
    root.chmod(0o777 & ~mask)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~mask)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~mask)


@contextmanager
def atomic_dir(out: str | Path, force: bool = False):
    """``with atomic_dir(out) as tmp:`` write into ``tmp``; on a clean exit ``tmp`` becomes ``out`` (replacing an
    empty directory, or an earlier export with ``force``), on an exception nothing is left behind."""
    out = check_out_dir(out, force)
    created = []  # parent directories this call creates, removed again on failure
    p = out.parent
    while not p.exists():
        created.append(p)
        p = p.parent
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        _remove_created(created)
        raise QAPrunerError(f"Cannot write the export to {out}: {exc.strerror or exc}.") from None
    try:
        yield tmp
        _normalise_modes(tmp)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        raise


def _move_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():  # checked: empty, or an earlier export and force
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "export")
    try:
        os.replace(tmp, out)
    except OSError as exc:
        if old is not None:
            os.replace(old / "export", out)
            shutil.rmtree(old, ignore_errors=True)
        raise QAPrunerError(f"Cannot move the finished export into {out}: {exc.strerror or exc}.") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_created(created: list[Path]) -> None:
    for d in created:  # deepest first
        try:
            d.rmdir()
        except OSError:
            pass
