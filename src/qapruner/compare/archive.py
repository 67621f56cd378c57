"""A report's per-item records as one compressed archive, and the report regenerated from it without a model.

``DIR/items.tar.xz`` holds ``items/<config-id>.jsonl`` and ``items/<config-id>.summary.json`` of every complete
configuration of ``DIR/results.json``. Members are sorted and their metadata fixed (mtime 0, uid/gid 0, mode
0644), so packing the same records twice gives the same bytes. results.json records it::

    "archive": {"file": "items.tar.xz", "sha256": "...",
                "shared": {"../experiment/items.tar.xz": {"sha256": "...", "configs": ["<config-id>", ...]}}}

``shared`` (only when needed): configurations whose two files are byte-identical to members of another report's
archive are not copied but referenced there (path relative to DIR). Reading checks every sha256.

    python -m qapruner.compare.archive DIR [--share OTHER_DIR ...]   # pack DIR/items/ (a report made before this)
    qapruner compare --from-archive DIR                             # (compare/regenerate.py) rewrite DIR's report
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
    tmp = out_dir / (ARCHIVE + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out_dir / ARCHIVE)  # atomic, like write_json
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
    args = ap.parse_args(argv)
    try:
        entry = pack_report(args.dir, args.share)
    except QAPrunerError as exc:
        raise SystemExit(f"error: {exc}") from None
    shared = sum(len(s["configs"]) for s in entry.get("shared", {}).values())
    print(f"wrote {Path(args.dir) / ARCHIVE} ({entry['sha256'][:12]}), {shared} configurations shared")


if __name__ == "__main__":
    main()
