"""A report's per-item records as one compressed archive, and the report regenerated from it without a model.

``DIR/items.tar.xz`` holds ``items/<config-id>.jsonl`` and ``items/<config-id>.summary.json`` of every complete
configuration of ``DIR/results.json``. Members are sorted and their metadata fixed (mtime 0, uid/gid 0, mode
0644), so packing the same records twice gives the same bytes. results.json records it::

    "archive": {"file": "items.tar.xz", "sha256": "...",
                "shared": {"../experiment/items.tar.xz": {"sha256": "...", "configs": ["<config-id>", ...]}}}

``shared`` (only when needed): configurations whose two files are byte-identical to members of another report's
archive are not copied but referenced there (path relative to DIR). Reading checks every sha256.

    python -m qapruner.compare.archive DIR [--share OTHER_DIR ...]   # pack DIR/items/ (a report made before this)
    python -m qapruner.compare.archive DIR --restore-from OTHER_DIR  # reuse OTHER_DIR's finished configurations
    qapruner compare --from-archive DIR                             # (compare/regenerate.py) rewrite DIR's report

A run that has not finished yet checkpoints what it has into ``DIR/items.partial.tar.xz`` (every few minutes and
when it stops); committed, that file lets a run on another machine (a fresh clone) resume where this one stopped:
``compare`` unpacks both archives into ``DIR/items/`` before it plans, never overwriting a file there.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import os
import tarfile
from pathlib import Path

from ..errors import QAPrunerError
from ..io import write_json

ARCHIVE = "items.tar.xz"
PARTIAL = "items.partial.tar.xz"  # the checkpoint of a run that has not finished
SUFFIXES = (".jsonl", ".summary.json")  # the two files of one configuration


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tar_xz(members: dict[str, bytes]) -> bytes:
    """Deterministic: sorted names, fixed metadata, and xz (unlike gzip, xz writes no timestamp)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid = len(members[name]), 0, 0o644, 0, 0
            tar.addfile(info, io.BytesIO(members[name]))
    return lzma.compress(buf.getvalue(), preset=6)  # default preset: an 8 MiB window, far above a report's size


def _untar_xz(path: Path, expected_sha: str | None = None) -> dict[str, bytes]:
    """{member name: bytes}; with ``expected_sha``, the file must match it."""
    if not path.is_file():
        raise QAPrunerError(f"Archive '{path}' does not exist.")
    data = path.read_bytes()
    if expected_sha is not None and sha256(data) != expected_sha:
        raise QAPrunerError(f"Archive '{path}' does not match the sha256 recorded in results.json, so it is corrupt "
                            "or was replaced.")
    try:
        with tarfile.open(fileobj=io.BytesIO(lzma.decompress(data))) as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except (lzma.LZMAError, tarfile.TarError) as exc:
        raise QAPrunerError(f"Archive '{path}' cannot be read ({exc}).") from None


def _on_disk(items_dir: Path, ids: list[str]) -> dict[str, dict[str, bytes]]:
    """{config id: {member name: bytes}} for the configurations whose two files exist (complete ones)."""
    out = {}
    for cid in ids:
        paths = [items_dir / f"{cid}{s}" for s in SUFFIXES]
        if all(p.is_file() for p in paths):
            out[cid] = {f"items/{p.name}": p.read_bytes() for p in paths}
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)  # atomic, like write_json


def _disk_members(items_dir: Path) -> dict[str, bytes]:
    """{member name: bytes} of every complete configuration (both files present) in ``items_dir``."""
    ids = [p.name[:-len(".summary.json")] for p in items_dir.glob("*.summary.json")]
    return {name: b for files in _on_disk(items_dir, ids).values() for name, b in files.items()}


def _archived(report_dir: Path) -> dict[str, bytes]:
    """Every member a report directory's archives hold: its final archive, the archives its results.json shares
    and its checkpoint (sha256 not checked: restoring only fills gaps, and every file is checked by its
    fingerprint before it is used)."""
    members: dict[str, bytes] = {}
    paths = [*(p for p in shares_of(report_dir)), report_dir / ARCHIVE, report_dir / PARTIAL]
    for path in paths:
        if path.is_file():
            members.update(_untar_xz(path))
    return members


def restore(out_dir: str | Path, sources: list[str | Path] = ()) -> int:
    """Fill ``DIR/items/`` with the finished configurations of DIR's archives and of each source report (its
    archives and its items/), never overwriting a file there; return how many configurations were added."""
    out_dir = Path(out_dir)
    items_dir = out_dir / "items"
    members = {}
    for src in [*map(Path, sources), out_dir]:
        members.update(_archived(src))
        if src != out_dir:
            members.update(_disk_members(src / "items"))
    added = 0
    for cid in sorted(_ids(members)):
        names = [f"items/{cid}{s}" for s in SUFFIXES]
        targets = [out_dir / n for n in names]
        if not all(n in members for n in names) or any(t.exists() for t in targets):
            continue
        items_dir.mkdir(parents=True, exist_ok=True)
        for n, t in zip(names, targets):
            _write_atomic(t, members[n])
        added += 1
    return added


def checkpoint(out_dir: str | Path) -> int:
    """Write ``DIR/items.partial.tar.xz``: every complete configuration in DIR/items/, plus those of an earlier
    checkpoint that are not on disk. Returns how many configurations it holds."""
    out_dir = Path(out_dir)
    members = _untar_xz(out_dir / PARTIAL) if (out_dir / PARTIAL).is_file() else {}
    members.update(_disk_members(out_dir / "items"))
    _write_atomic(out_dir / PARTIAL, _tar_xz(members))
    return len(_ids(members))


def pack(out_dir: str | Path, results: dict, share: list[str | Path] = ()) -> dict:
    """Write DIR/items.tar.xz from DIR/items/ and return results.json's "archive" entry. A configuration whose
    files are byte-identical to members of one of the ``share`` archives is referenced there, not copied."""
    out_dir = Path(out_dir)
    files = _on_disk(out_dir / "items", [c["id"] for c in results["configs"]])
    shared = {}
    for other in map(Path, share):
        theirs = _untar_xz(other)
        same = sorted(cid for cid, m in files.items() if all(theirs.get(n) == b for n, b in m.items()))
        if same:
            rel = Path(os.path.relpath(other.resolve(), out_dir.resolve())).as_posix()
            shared[rel] = {"sha256": sha256(other.read_bytes()), "configs": same}
            for cid in same:
                del files[cid]
    data = _tar_xz({name: b for m in files.values() for name, b in m.items()})
    _write_atomic(out_dir / ARCHIVE, data)
    return {"file": ARCHIVE, "sha256": sha256(data), **({"shared": shared} if shared else {})}


def shares_of(out_dir: str | Path) -> list[Path]:
    """The other archives DIR/results.json already references, so a rerun into DIR keeps sharing them."""
    path = Path(out_dir) / "results.json"
    try:
        entry = json.loads(path.read_text()).get("archive") or {}
    except (OSError, json.JSONDecodeError):
        return []
    return [p for p in (Path(out_dir) / rel for rel in entry.get("shared", {})) if p.is_file()]


def _parse(cid: str, members: dict[str, bytes]) -> dict:
    """One configuration's record: the JSONL header, its item rows (one per uid, the first written, as the item
    store reads them) and its summary."""
    lines = members[f"items/{cid}.jsonl"].decode().splitlines()
    rows = {}
    for line in lines[1:]:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut short by an interruption (the store recomputes from here)
        rows.setdefault(r["uid"], r)
    return {"header": json.loads(lines[0]) if lines else {}, "rows": list(rows.values()),
            "summary": json.loads(members[f"items/{cid}.summary.json"])}


def _ids(members: dict[str, bytes]) -> set[str]:
    return {n[len("items/"):-len(".jsonl")] for n in members if n.startswith("items/") and n.endswith(".jsonl")}


def read_records(out_dir: str | Path, results: dict | None = None) -> dict[str, dict]:
    """{config id: {"header", "rows", "summary"}} from DIR's archive and the archives it shares (sha256 checked)."""
    out_dir = Path(out_dir)
    if results is None:
        results = json.loads((out_dir / "results.json").read_text())
    entry = results.get("archive")
    if not entry:
        raise QAPrunerError(f"'{out_dir / 'results.json'}' names no archive; pack its items/ first with "
                            f"`python -m qapruner.compare.archive {out_dir}`.")
    own = _untar_xz(out_dir / entry["file"], entry["sha256"])
    records = {cid: _parse(cid, own) for cid in _ids(own)}
    for rel, ref in entry.get("shared", {}).items():
        theirs = _untar_xz(out_dir / rel, ref["sha256"])
        missing = sorted(set(ref["configs"]) - _ids(theirs))
        if missing:
            raise QAPrunerError(f"Archive '{out_dir / rel}' lacks configuration {missing[0]} that results.json "
                                "says it shares.")
        records.update({cid: _parse(cid, theirs) for cid in ref["configs"]})
    return records


def pack_report(out_dir: str | Path, share: list[str | Path] = ()) -> dict:
    """Pack an existing report directory's items/ and record the archive in its results.json."""
    out_dir = Path(out_dir)
    path = out_dir / "results.json"
    if not path.is_file():
        raise QAPrunerError(f"'{path}' does not exist; pack needs a report directory written by compare.")
    results = json.loads(path.read_text())
    results["archive"] = pack(out_dir, results, [Path(d) / ARCHIVE for d in share])
    write_json(path, results)
    return results["archive"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m qapruner.compare.archive",
                                 description="Pack a compare report's items/ into DIR/items.tar.xz.")
    ap.add_argument("dir", help="report directory (results.json and items/)")
    ap.add_argument("--share", action="append", default=[], metavar="OTHER_DIR",
                    help="another report whose items.tar.xz holds configurations to reference instead of copy")
    ap.add_argument("--restore-from", action="append", default=[], metavar="OTHER_DIR",
                    help="instead of packing: copy OTHER_DIR's finished configurations (its items/ and archives) "
                         "into DIR/items/ where missing")
    args = ap.parse_args(argv)
    if args.restore_from:
        missing = [d for d in args.restore_from if not Path(d).is_dir()]
        if missing:
            raise SystemExit(f"error: '{missing[0]}' is not a report directory.")
        print(f"{restore(args.dir, args.restore_from)} configurations copied into {Path(args.dir) / 'items'}")
        return
    try:
        entry = pack_report(args.dir, args.share)
    except QAPrunerError as exc:
        raise SystemExit(f"error: {exc}") from None
    shared = sum(len(s["configs"]) for s in entry.get("shared", {}).values())
    print(f"wrote {Path(args.dir) / ARCHIVE} ({entry['sha256'][:12]}), {shared} configurations shared")


if __name__ == "__main__":
    main()
