"""compare's items archive: pack → read round trip, deterministic bytes, sharing with another report's archive,
and a report regenerated from its archive alone (fake backend from test_compare, so no model; a few seconds)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from test_compare import ENV, FakeBackend, cfg_for, crafted_outcome

from qapruner.compare.archive import ARCHIVE, PARTIAL, checkpoint, pack, pack_report, read_records, restore
from qapruner.compare.regenerate import regenerate
from qapruner.compare.pipeline import run_compare
from qapruner import cli
from qapruner.errors import QAPrunerError

QUIET = dict(log=lambda *a: None, env=ENV)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Two finished reports side by side, made once: base (alpha 0.7) and other (alpha 0.5: only QA rows differ)."""
    root = tmp_path_factory.mktemp("reports")
    return {name: run_compare(cfg_for(root, out=str(root / name), alpha=alpha), FakeBackend(crafted_outcome), **QUIET)
            for name, alpha in (("base", 0.7), ("other", 0.5))}, root


def report(made, tmp_path, name="base") -> tuple[Path, dict]:
    """A private copy of a made report (tests change them)."""
    results, root = made
    if not (tmp_path / name).exists():
        shutil.copytree(root / name, tmp_path / name)
    return tmp_path / name, json.loads(json.dumps(results[name]))


def test_round_trip_gives_the_records_on_disk(made, tmp_path):
    out, res = report(made, tmp_path)
    assert res["archive"]["file"] == ARCHIVE and "shared" not in res["archive"]
    assert json.loads((out / "results.json").read_text())["archive"] == res["archive"]
    records = read_records(out)
    assert set(records) == {c["id"] for c in res["configs"]}
    for cid, rec in records.items():
        jsonl = out / "items" / f"{cid}.jsonl"
        header, *rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
        assert rec["header"] == header and rec["rows"] == rows
        assert rec["summary"] == json.loads((out / "items" / f"{cid}.summary.json").read_text())


def test_packing_is_deterministic(made, tmp_path):
    out, res = report(made, tmp_path)
    first = (out / ARCHIVE).read_bytes()
    for p in (out / "items").iterdir():  # new mtimes and a different directory order must not matter
        os.utime(p, (1e9, 1e9))
    assert pack(out, res) == res["archive"] and (out / ARCHIVE).read_bytes() == first


def test_regenerate_from_archive_alone_gives_the_same_statistics(made, tmp_path):
    out, res = report(made, tmp_path)
    md = (out / "report.md").read_text()
    shutil.rmtree(out / "items")
    (out / "gallery.png").unlink()
    # spoil what must be recomputed, so that equality below proves it was
    doc = json.loads((out / "results.json").read_text())
    for c in doc["configs"]:
        c.update(correct=0, accuracy=0.0, ci95=[0.0, 0.0])
    for c in doc["comparisons"]:
        c.update(diff=0.0, p_value=1.0, p_holm=1.0, b_only=0, ci95=[0.0, 0.0])
    (out / "results.json").write_text(json.dumps(doc))
    again = regenerate(out, log=lambda *a: None)
    assert again["comparisons"] == res["comparisons"]
    assert again["configs"] == res["configs"]
    assert json.loads((out / "results.json").read_text()) == res
    assert (out / "report.md").read_text() == md and (out / "gallery.png").is_file()


def test_shared_configurations_are_referenced_not_copied(made, tmp_path):
    base, _ = report(made, tmp_path, "base")
    out, res = report(made, tmp_path, "other")
    entry = pack_report(out, share=[base])
    ref = entry["shared"]["../base/items.tar.xz"]
    qa = {c["id"] for c in res["configs"] if c["qa"]}
    assert set(ref["configs"]) == {c["id"] for c in res["configs"]} - qa
    assert (out / ARCHIVE).stat().st_size < (base / ARCHIVE).stat().st_size
    assert set(read_records(out)) == {c["id"] for c in res["configs"]}
    # a rerun into the same directory keeps sharing what the last archive shared
    rerun = run_compare(cfg_for(tmp_path, out=str(out), alpha=0.5), FakeBackend(crafted_outcome), **QUIET)
    assert rerun["archive"] == entry
    shutil.rmtree(out / "items")
    assert regenerate(out, log=lambda *a: None)["comparisons"] == res["comparisons"]
    # the shared archive changed: one sentence saying so
    (base / ARCHIVE).write_bytes((base / ARCHIVE).read_bytes()[:-1] + b"\0")
    with pytest.raises(QAPrunerError, match=r"base/items.tar.xz' does not match the sha256"):
        regenerate(out)


def test_corrupt_or_missing_archive_is_one_sentence(made, tmp_path):
    out, _ = report(made, tmp_path)
    data = bytearray((out / ARCHIVE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / ARCHIVE).write_bytes(bytes(data))
    with pytest.raises(QAPrunerError) as err:
        regenerate(out)
    msg = str(err.value)
    assert "does not match the sha256 recorded in results.json" in msg and msg.count(". ") == 0
    (out / ARCHIVE).unlink()
    with pytest.raises(QAPrunerError, match="does not exist"):
        regenerate(out)
    with pytest.raises(QAPrunerError, match="results.json' does not exist"):
        regenerate(tmp_path / "nowhere")


def test_cli_from_archive_takes_the_directory_only(made, tmp_path):
    from qapruner.cli import build_parser

    out, _ = report(made, tmp_path)
    args = build_parser().parse_args(["compare", "--from-archive", str(out)])
    assert args.func(args) == 0
    args = build_parser().parse_args(["compare", "--from-archive", str(out), "--limit", "3"])
    with pytest.raises(QAPrunerError, match="--from-archive takes the report directory only"):
        args.func(args)


# ------------------------------------------------------------------------------- checkpoint and resume
def test_an_interrupted_run_resumes_from_its_checkpoint_on_a_fresh_clone(made, tmp_path):
    """A run cut short leaves items.partial.tar.xz; with items/ gone (a fresh clone of a commit holding only
    the checkpoint), the rerun unpacks it, computes only the rest and gives the uninterrupted run's report."""
    results, _ = made
    cfg = cfg_for(tmp_path, out=str(tmp_path / "cut"))
    with pytest.raises(KeyboardInterrupt):
        run_compare(cfg, FakeBackend(crafted_outcome, fail_after=4), **QUIET)
    out = tmp_path / "cut"
    assert (out / PARTIAL).is_file() and not (out / "results.json").exists()
    shutil.rmtree(out / "items")
    backend = FakeBackend(crafted_outcome)
    res = run_compare(cfg, backend, **QUIET)
    assert len(backend.evaluated) == len(res["configs"]) - 4 and res["wall"]["configs_reused"] == 4
    assert res["comparisons"] == results["base"]["comparisons"]
    assert [c["accuracy"] for c in res["configs"]] == [c["accuracy"] for c in results["base"]["configs"]]
    assert not (out / PARTIAL).exists()  # finished: the final archive holds everything


class TerminatedBackend(FakeBackend):
    """Sends this process a real SIGTERM (``kill PID``) during its fifth evaluation."""

    def evaluate(self, *args, **kwargs):
        if len(self.evaluated) == 4:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
            raise AssertionError("SIGTERM did not stop the run")
        return super().evaluate(*args, **kwargs)


def test_sigterm_stops_compare_like_ctrl_c_and_leaves_a_checkpoint(tmp_path, monkeypatch, capsys):
    """`kill PID` on a background run (where the shell ignores SIGINT for it) exits 143 through the same
    path as Ctrl-C: the four finished configurations are in the checkpoint, and the handler is restored."""
    cfg = cfg_for(tmp_path, out=str(tmp_path / "cut"))
    monkeypatch.setattr("qapruner.commands.compare.run", lambda args: run_compare(cfg, TerminatedBackend(), **QUIET))
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["compare"]) == 143
    assert "qapruner: terminated; finished items are saved" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before
    shutil.rmtree(tmp_path / "cut" / "items")
    assert (tmp_path / "cut" / PARTIAL).is_file() and restore(tmp_path / "cut") == 4  # written on stop


def test_checkpoint_keeps_what_is_no_longer_on_disk_and_restore_never_overwrites(made, tmp_path):
    out, res = report(made, tmp_path)
    ids = [c["id"] for c in res["configs"]]
    assert checkpoint(out) == len(ids)
    (out / "items" / f"{ids[0]}.jsonl").unlink()
    (out / "items" / f"{ids[0]}.summary.json").unlink()
    assert checkpoint(out) == len(ids)  # the deleted configuration stays in the checkpoint
    mine = out / "items" / f"{ids[1]}.summary.json"
    mine.write_text("{}")
    assert restore(out) == 1 and (out / "items" / f"{ids[0]}.jsonl").is_file()
    assert mine.read_text() == "{}"


def test_cli_restore_from_copies_another_reports_finished_configurations(made, tmp_path, capsys):
    from qapruner.compare.archive import main

    src, res = report(made, tmp_path)
    shutil.rmtree(src / "items")  # only the committed archive is left
    main([str(tmp_path / "new"), "--restore-from", str(src)])
    assert f"{len(res['configs'])} configurations copied" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "new" / "items").iterdir()) == sorted(
        f"{c['id']}{s}" for c in res["configs"] for s in (".jsonl", ".summary.json"))
    with pytest.raises(SystemExit, match="is not a report directory"):
        main([str(tmp_path / "new"), "--restore-from", str(tmp_path / "nowhere")])


def test_report_warns_when_configurations_ran_on_different_cpu_kernels(made, tmp_path):
    """Configurations resumed on another machine may have run with other CPU kernels (AVX2 vs AVX512)."""
    from qapruner.compare.report import markdown

    _, res = report(made, tmp_path)
    assert "different kernels" not in markdown(res, {})
    for i, c in enumerate(res["configs"]):
        c["cpu_capability"] = "AVX512" if i % 3 else "AVX2"
    n2 = sum(1 for i in range(len(res["configs"])) if i % 3 == 0)
    text = markdown(res, {})
    assert f"different kernels (AVX2: {n2}, AVX512: {len(res['configs']) - n2})" in text


def test_a_quantized_model_half_computed_on_other_cpu_kernels_reruns_whole(made, tmp_path):
    """Resumed on a machine with other CPU kernels, the rows of a partly finished quantized model all rerun (one
    model's rows are compared with each other); a fully finished model and the FP rows are kept."""
    out, res = report(made, tmp_path)
    quantized = [c for c in res["configs"] if c["quant"]]
    for c in quantized:  # as if an AVX2 machine had computed every quantized row
        p = out / "items" / f"{c['id']}.summary.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), "cpu_capability": "AVX2"}))
    log = []
    cfg = cfg_for(tmp_path, out=str(out), alpha=0.7)
    backend = FakeBackend(crafted_outcome)
    run_compare(cfg, backend, log=log.append, env=ENV)
    assert backend.evaluated == []  # complete: kept, whatever it ran on
    for suffix in (".jsonl", ".summary.json"):
        (out / "items" / f"{quantized[-1]['id']}{suffix}").unlink()
    (out / ARCHIVE).unlink()  # else the rerun restores the deleted row from the final archive
    backend = FakeBackend(crafted_outcome)
    again = run_compare(cfg, backend, log=log.append, env=ENV)
    assert len(backend.evaluated) == len(quantized)
    assert any(f"{len(quantized) - 1} finished configurations of w4a4" in line and "rerunning all" in line
               for line in log)
    assert again["comparisons"] == res["comparisons"]
