"""compare: grid, config merging, resumability, paired statistics, report and plots — with a fake backend
(synthetic tasks and per-item results), so no model is needed and the whole file runs in a few seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qapruner.compare.config import CompareConfig, load_config_file, resolve
from qapruner.compare.grid import Row, build_grid
from qapruner.compare.orchestrate import Backend
from qapruner.compare.pipeline import run_compare
from qapruner.compare.stats import holm, paired
from qapruner.errors import QAPrunerError
from qapruner.eval.stats import wilson_ci
from qapruner.eval.store import ItemStore
from qapruner.prune import num_keep
from qapruner.tasks.base import Item, Task

N_TOKENS, GRID = 16, (4, 4)


def synthetic_task(name: str, n: int = 40) -> Task:
    answers = ("yes", "no")
    items = [Item(f"{name}/{i}", i % 10, f"question {i}?", f"question {i}?", answers, answers[i % 2],
                  kind="a" if i < n // 2 else "b") for i in range(n)]
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (20, 20, 3), dtype=np.uint8) for _ in range(10)]
    return Task(name, items, 10, lambda i: Image.fromarray(imgs[i]), cache_key=f"{name}-test", meta={"split": "test"})


class FakeModel:
    grid = GRID

    def __init__(self, quant=None):
        self.quant = quant


class FakeBackend(Backend):
    """Outcome of item i under a configuration = outcome(kind, quant, host, keep, i) (True = correct)."""

    def __init__(self, outcome=None, fail_after: int | None = None):
        self.outcome = outcome or (lambda kind, quant, host, keep, i: (i * 7 + len(kind) + int(100 * (keep or 1))) % 3 != 0)
        self.fail_after = fail_after
        self.evaluated, self.quantized, self.loaded, self.gallery_calls = [], [], 0, 0

    def load_task(self, name):
        return synthetic_task(name)

    def load_model(self, spec):
        self.loaded += 1
        return FakeModel()

    def calibrates(self, preset):
        return "gptq" in preset

    def check_preset(self, preset):
        if not preset.startswith("w"):
            raise QAPrunerError(f"bad preset {preset}")

    def quantize(self, loaded, preset, task, cfg, progress=None, calib_prune=None):
        source = task.name if isinstance(task, Task) else tuple(t.name for t in task)
        pruned = () if calib_prune is None else ((calib_prune.host, calib_prune.keep, calib_prune.qa),)
        self.quantized.append((preset, source, *pruned))
        return FakeModel(preset), {"preset": preset}

    def check_model(self, adapter, cfg):
        pass

    def evaluate(self, loaded, task, ecfg, items_path, progress, label):
        if self.fail_after is not None and len(self.evaluated) >= self.fail_after:
            raise KeyboardInterrupt
        quant = ecfg.preset
        assert loaded.quant == quant  # each row runs on the model of its own preset
        p = ecfg.prune
        kind = "blank" if ecfg.blank_image else "dense" if p is None else ("host" if not p.qa else "qa"
                                                                          if p.sensitivity == "paper" else f"qa-{p.sensitivity}")
        assert ecfg.blank_image == (task.cache_key.startswith("blank"))  # the blind row runs on the blanked task
        store = ItemStore(items_path, ecfg.key())
        rows = []
        k = N_TOKENS if p is None else num_keep(p.keep, N_TOKENS)
        for it in task.items:
            i = int(it.uid.split("/")[1])
            ok = self.outcome(kind, quant, p and p.host, p and p.keep, i)
            row = {"uid": it.uid, "pred": it.answer if ok else "x", "answer": it.answer, "correct": ok, "kind": it.kind}
            if p is not None:
                start = (i + (3 if p.qa else 0)) % N_TOKENS
                row["kept"] = sorted((start + j) % N_TOKENS for j in range(k))
            rows.append(row)
        store.add(rows)
        self.evaluated.append(label)
        c = sum(r["correct"] for r in rows)
        return {"n": len(rows), "correct": c, "accuracy": c / len(rows), "ci95": list(wilson_ci(c, len(rows))),
                "visual_tokens": {"before": N_TOKENS, "kept": k}, "timing": {"select_s": 0.01, "prefill_s": 0.1},
                "seconds": 0.1, "items_per_second": 100.0, "subset": task.meta.get("subset"), "mode": ecfg.mode}

    def gallery_data(self, loaded, task, items, cfg):
        self.gallery_calls += 1
        rng = np.random.default_rng(1)
        return {it.uid: {"sq": rng.random(N_TOKENS).tolist(), "image": rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)}
                for it in items}

    def release(self, loaded):
        pass


def cfg_for(tmp_path, **kw) -> CompareConfig:
    base = dict(tasks="t1", quant="w4a4", hosts="cls,cdpruner", keeps="0.5,0.125", limit=None, out=str(tmp_path / "cmp"),
                bootstrap_reps=500, gallery=2)
    base.update(kw)
    return CompareConfig(**base)


ENV = {"python": "3", "torch": "x", "transformers": "y", "device": "cpu", "cpu_threads": 1}


# ------------------------------------------------------------------------------------------------ grid
def test_grid_rows(tmp_path):
    cfg = cfg_for(tmp_path)
    rows = build_grid(cfg)
    kinds = [r.kind for r in rows]
    assert kinds.count("fp-dense") == 1 and kinds.count("q-dense") == 1 and kinds.count("fp-blank") == 1
    assert kinds.count("fp-host") == 4 and kinds.count("q-host") == 4 and kinds.count("q-qa") == 4
    assert len(rows) == 15
    blind = rows[kinds.index("fp-blank")]
    assert blind.eval_config(cfg).blank_image and blind.host is None and blind.quant is None
    assert blind.config_id(cfg) != Row("t1").config_id(cfg) and "__blank__" in blind.config_id(cfg)
    assert len(build_grid(cfg_for(tmp_path, blank=False))) == 14
    assert Row("t1", "w4a4", "cdpruner", 0.125, True) in rows
    assert not any(r.kind == "fp-qa" for r in rows)
    assert len({r.config_id(cfg) for r in rows}) == len(rows)
    assert len(build_grid(cfg_for(tmp_path, fp_pruned=False))) == 11
    two = cfg_for(tmp_path, quant="w4a4,w4a8", tasks="t1,t2")
    assert len(build_grid(two)) == 2 * (2 + 4 + 2 * (1 + 8))
    # the id changes with anything that changes per-item results, the batch size included (padding can flip a
    # near-tie under activation quantization); the default batch size 16 keeps the ids of earlier runs
    r = Row("t1", "w4a4", "cls", 0.5, True)
    assert r.config_id(cfg) != r.config_id(cfg_for(tmp_path, seed=1))
    assert r.config_id(cfg) != r.config_id(cfg_for(tmp_path, alpha="dynamic"))
    assert r.config_id(cfg) != r.config_id(cfg_for(tmp_path, batch_size=3))
    assert "batch_size" not in r.fingerprint(cfg) and cfg.batch_size == 16
    assert r.prune_config(cfg).qa and r.eval_config(cfg).preset == "w4a4"


def test_config_defaults_file_and_overrides(tmp_path):
    d = CompareConfig()
    assert d.tasks == ["easy-vqa", "fashion-mnist"] and d.quant == ["w4a4"] and len(d.hosts) == 6
    assert d.keeps == [0.5, 0.25, 0.125] and d.paper_keep == 0.125 and d.fp_pruned
    f = tmp_path / "r.toml"
    f.write_text('tasks = ["easy-vqa"]\nquant = "w4a4,w4a8"\nkeeps = [0.25]\nno-such = 1\n')
    with pytest.raises(QAPrunerError, match="unknown keys"):
        load_config_file(f)
    f.write_text('tasks = ["easy-vqa"]\nquant = "w4a4,w4a8"\nkeeps = [0.25]\nalpha = "dynamic"\nlimit = 8\n')
    cfg = resolve(load_config_file(f), {"limit": 4, "hosts": "cls", "seed": None})
    assert cfg.quant == ["w4a4", "w4a8"] and cfg.keeps == [0.25] and cfg.alpha == "dynamic"
    assert cfg.limit == 4 and cfg.hosts == ["cls"] and cfg.seed == 0 and cfg.paper_keep == 0.25
    j = tmp_path / "r.json"
    j.write_text(json.dumps({"hosts": ["divprune"], "fp_pruned": False}))
    assert resolve(load_config_file(j), {}).hosts == ["divprune"]
    for bad in ({"hosts": "cls,nope"}, {"keeps": "0.5,1.0"}, {"alpha": "1.5"}, {"quant": "fp"}, {"hosts": "cls,cls"},
                {"limit": 0}, {"keeps": "half"}):
        with pytest.raises(QAPrunerError):
            CompareConfig(**bad)


# ------------------------------------------------------------------------------------------- statistics
def test_paired_stats_match_hand_computed_mcnemar():
    # 20 items: both right on 8, both wrong on 4, QA only right on 7, host only right on 1.
    host = [True] * 8 + [False] * 4 + [False] * 7 + [True]
    qa = [True] * 8 + [False] * 4 + [True] * 7 + [False]
    uids = [f"u{i:02d}" for i in range(20)]
    s = paired(dict(zip(uids, host)), dict(zip(uids, qa)), reps=2000, seed=0)
    # exact McNemar: 8 discordant pairs, 7 vs 1 -> p = 2 * P(X <= 1 | Bin(8, 1/2)) = 2 * 9 / 256
    assert s["b_only"] == 7 and s["a_only"] == 1
    assert s["p_value"] == pytest.approx(18 / 256)
    assert s["diff"] == pytest.approx(6 / 20)
    assert s["ci95"][0] < 0.3 < s["ci95"][1] and s["ci95"][0] > 0
    with pytest.raises(ValueError):
        paired({"a": True}, {"b": True}, 10, 0)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def crafted_outcome(kind, quant, host, keep, i):
    """cdpruner @ 0.125: host right on items 0-19 and 36; QA right on 0-19 and 20-26 (7 vs 1 discordant)."""
    if host == "cdpruner" and keep == 0.125:
        if kind == "host":
            return i < 20 or i == 36
        return i < 27
    return i % 2 == 0 if kind != "dense" else i % 4 != 0


def test_pipeline_outputs_and_stats(tmp_path):
    cfg = cfg_for(tmp_path)
    backend = FakeBackend(crafted_outcome)
    res = run_compare(cfg, backend, argv=["compare", "--tasks", "t1"], log=lambda *a: None, env=ENV)
    out = Path(cfg.out)
    assert backend.loaded == 1 and backend.quantized == [("w4a4", "t1")] and len(backend.evaluated) == 15
    for name in ("results.json", "report.md", "report.html", "accuracy_t1.png", "qa_minus_host.png", "gallery.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "accuracy_t1.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "results.json").read_text())
    assert saved["command"] == "qapruner compare --tasks t1" and saved["seeds"]["subset"] == 0
    assert saved["environment"] == ENV and len(saved["configs"]) == 15
    assert all({"accuracy", "ci95", "n", "visual_tokens", "timing"} <= set(c) for c in saved["configs"])
    comp = {(c["host"], c["keep"]): c for c in saved["comparisons"]}
    assert len(comp) == 4
    c = comp[("cdpruner", 0.125)]
    assert (c["b_only"], c["a_only"]) == (7, 1) and c["p_value"] == pytest.approx(18 / 256)
    assert c["diff"] == pytest.approx(6 / 40) and not c["significant"]
    assert comp[("cls", 0.5)]["p_value"] == 1.0
    md = (out / "report.md").read_text()
    assert ("| task | n | FP dense | FP blank image | W4A4 dense | W4A4 + cls | W4A4 + QA-cls | W4A4 + cdpruner | "
            "W4A4 + QA-cdpruner |") in md
    # Table 1 row: FP dense 75 %, blank 50 %, Wq dense 75 %, cls host/QA 50 %, cdpruner 52.5 % / 67.5 %
    assert "| t1 | 40 | 75.0 | 50.0 | 75.0 | 50.0 | 50.0 = | 52.5 | 67.5 ▲ |" in md
    # the blind model (right on even items) gets the 20 odd items wrong: they are the image-dependent part
    dep = saved["image_dependence"]["t1"]
    assert (dep["n"], dep["image_dependent"], dep["kinds"]) == (40, 20, {"a": 20, "b": 20})
    rows = {r["label"]: r for r in dep["rows"]}
    # FP dense is right on i % 4 != 0: of the odd items all 20, of kind a (i < 20) 15
    assert rows["FP dense"]["image_dependent"] == 1.0 and rows["FP dense"]["kinds"]["a"] == 0.75
    assert rows["FP dense, blank image"]["image_dependent"] == 0.0
    # QA-cdpruner @ 0.125 is right on i < 27: 13 of the 20 odd items
    assert rows["W4A4 + QA-cdpruner @ 0.125"]["image_dependent"] == pytest.approx(13 / 20)
    assert "## How much the image decides" in md
    assert "the blind model gets 20 of 40 items wrong (50 % of the column is image-dependent)" in md
    assert "| FP dense | 75.0 | 100.0 | 75.0 | 75.0 |" in md
    assert "None of the 4 QA − host differences is significant" in md
    assert "## All configurations: t1" in md and "![" in md
    assert "<table>" in (out / "report.html").read_text()
    assert res["gallery"]["host"] == "cdpruner" and res["gallery"]["qa_id"]


def test_rerun_after_interruption_skips_finished(tmp_path):
    cfg = cfg_for(tmp_path)
    first = FakeBackend(fail_after=5)
    with pytest.raises(KeyboardInterrupt):
        run_compare(cfg, first, log=lambda *a: None, env=ENV)
    assert len(first.evaluated) == 5
    second = FakeBackend()
    res = run_compare(cfg, second, log=lambda *a: None, env=ENV)
    assert len(second.evaluated) == 15 - 5
    assert (res["wall"]["configs_computed"], res["wall"]["configs_reused"]) == (10, 5) and res["wall"]["seconds"] >= 0
    assert "10 configurations computed, 5 reused" in (Path(cfg.out) / "report.md").read_text()
    assert not set(first.evaluated) & set(second.evaluated)
    third = FakeBackend()
    res = run_compare(cfg, third, log=lambda *a: None, env=ENV)
    assert third.evaluated == [] and third.loaded == 0 and third.quantized == [] and third.gallery_calls == 0
    assert len(res["configs"]) == 15
    # a changed option only reruns what it changes: alpha touches the QA rows alone
    fourth = FakeBackend()
    run_compare(cfg_for(tmp_path, alpha=0.5), fourth, log=lambda *a: None, env=ENV)
    assert len(fourth.evaluated) == 4 and all("QA-" in label for label in fourth.evaluated)


def test_one_quantized_model_per_preset(tmp_path):
    cfg = cfg_for(tmp_path, tasks="t1,t2", quant="w4a4,w4a8-gptq", gallery=0)
    b = FakeBackend()
    res = run_compare(cfg, b, log=lambda *a: None, env=ENV)
    # RTN needs no calibration: one copy for both tasks; GPTQ calibrates on each task: one per task
    assert b.quantized == [("w4a4", "t1"), ("w4a8-gptq", "t1"), ("w4a8-gptq", "t2")]
    assert len(res["comparisons"]) == 2 * 2 * 2 * 2
    md = (Path(cfg.out) / "report.md").read_text()
    assert "| task | Wq | n | FP dense | FP blank image | Wq dense |" in md and "| t2 | W4A8-GPTQ |" in md
    assert not (Path(cfg.out) / "gallery.png").exists()


def test_cli_parses_and_merges_config(tmp_path):
    from qapruner.cli import build_parser
    from qapruner.commands.compare import config_from_args

    f = tmp_path / "r.toml"
    f.write_text('model = "some/llava"\ntasks = "scienceqa-img"\nhosts = "cdpruner"\nkeeps = [0.125]\nseed = 3\n')
    args = build_parser().parse_args(["compare", "--config", str(f), "--quant", "w4a4,w4a6", "--limit", "8",
                                      "--no-fp-pruned", "--out", str(tmp_path / "o")])
    cfg = config_from_args(args)
    assert cfg.model == "some/llava" and cfg.tasks == ["scienceqa-img"] and cfg.quant == ["w4a4", "w4a6"]
    assert cfg.limit == 8 and cfg.seed == 3 and not cfg.fp_pruned and cfg.keeps == [0.125]
    args = build_parser().parse_args(["compare", "--task", "fashion-mnist"])
    cfg = config_from_args(args)
    assert cfg.tasks == ["fashion-mnist"] and cfg.model == "testbed:v7" and cfg.batch_size == 16
    # without --config the demo's grid (the options given still override it), not the many-hour full grid
    assert cfg.limit == 24 and cfg.hosts == ["cls", "cdpruner"] and cfg.keeps == [0.125] and not cfg.fp_pruned
    demo = resolve(load_config_file(Path(__file__).resolve().parents[1] / "configs" / "demo.toml"), {})
    default = config_from_args(build_parser().parse_args(["compare"]))
    assert {k: v for k, v in default.to_dict().items() if k not in ("out", "notes", "gallery")} == \
        {k: v for k, v in demo.to_dict().items() if k not in ("out", "notes", "gallery")}


def test_paper_recipe_parses():
    root = Path(__file__).resolve().parents[1]
    cfg = resolve(load_config_file(root / "configs" / "paper_llava15_scienceqa.toml"), {})
    assert cfg.model == "llava-hf/llava-1.5-7b-hf" and cfg.tasks == ["scienceqa-img"]
    assert cfg.hosts == ["cdpruner"] and cfg.keeps == [0.125] and cfg.quant[0].startswith("w4a4")


def sweep_outcome(kind, quant, host, keep, i):
    """cls @ 0.125: host right on i < 20; QA (paper) on i < 22; QA (norm) on i < 10 (10 host-only items)."""
    if host == "cls" and keep == 0.125:
        return i < {"host": 20, "qa": 22, "qa-norm": 10}[kind]
    return i % 2 == 0


def test_sensitivity_sweep_rows_stats_report_and_resume(tmp_path):
    from qapruner.compare.regenerate import regenerate

    single = cfg_for(tmp_path, gallery=0)
    run_compare(single, FakeBackend(sweep_outcome), log=lambda *a: None, env=ENV)
    cfg = cfg_for(tmp_path, sensitivity="paper,norm", gallery=0)
    rows = build_grid(cfg)
    assert len(rows) == len(build_grid(single)) + 4  # one more QA row per host and keep
    norm = Row("t1", "w4a4", "cls", 0.125, True, sensitivity="norm")
    assert norm in rows and norm.eval_config(cfg).prune.sensitivity == "norm"
    assert "__cls-qa-norm-k0.125__" in norm.config_id(cfg) and norm.label == "W4A4 + QA(norm)-cls @ 0.125"
    # the paper rows keep their ids, so an earlier single-sensitivity run is reused: only the norm rows run
    assert {r.config_id(single) for r in build_grid(single)} < {r.config_id(cfg) for r in rows}
    b = FakeBackend(sweep_outcome)
    res = run_compare(cfg, b, log=lambda *a: None, env=ENV)
    assert len(b.evaluated) == 4 and all("QA(norm)-" in label for label in b.evaluated)
    comp = {(c["host"], c["keep"], c["sensitivity"]): c for c in res["comparisons"]}
    assert len(comp) == 8
    assert comp[("cls", 0.125, "paper")]["diff"] == pytest.approx(2 / 40)
    c = comp[("cls", 0.125, "norm")]
    assert (c["b_only"], c["a_only"]) == (0, 10) and c["diff"] == pytest.approx(-10 / 40)
    assert c["p_value"] == pytest.approx(2 / 1024) and c["significant"]
    md = (Path(cfg.out) / "report.md").read_text()
    assert "| W4A4 + cls | W4A4 + QA-cls | W4A4 + QA(norm)-cls |" in md
    assert "| 50.0 | 55.0 ▲ | 25.0 ▼ |" in md  # cls @ 0.125: host 20/40, QA 22/40, QA(norm) 10/40
    assert "norm (L2 norm of each projected token, the authors' released code)" in md
    assert "t1 W4A4 QA(norm)-cls @ 0.125 (-25.0 pts" in md
    again = regenerate(cfg.out, log=lambda *a: None)
    assert again["comparisons"] == json.loads(json.dumps(res["comparisons"]))


def test_regenerate_a_report_made_before_the_sensitivity_sweep(tmp_path):
    from qapruner.compare.regenerate import regenerate

    cfg = cfg_for(tmp_path, gallery=0)
    res = run_compare(cfg, FakeBackend(sweep_outcome), log=lambda *a: None, env=ENV)
    path = Path(cfg.out) / "results.json"
    old = json.loads(path.read_text())
    old["config"]["sensitivity"] = "paper"  # the old results.json: one string, rows and comparisons unnamed
    for c in old["configs"] + old["comparisons"]:
        c.pop("sensitivity", None)
    path.write_text(json.dumps(old))
    again = regenerate(cfg.out, log=lambda *a: None)
    assert [(c["host"], c["keep"], c["diff"]) for c in again["comparisons"]] == \
           [(c["host"], c["keep"], c["diff"]) for c in res["comparisons"]]
    assert "| W4A4 + cls | W4A4 + QA-cls |" in (Path(cfg.out) / "report.md").read_text()


def test_shared_calibration_quantizes_once_per_preset(tmp_path):
    per_task = cfg_for(tmp_path, tasks="t1,t2", quant="w4a4,w4a8-gptq", gallery=0)
    shared = cfg_for(tmp_path, tasks="t1,t2", quant="w4a4,w4a8-gptq", gallery=0, calibration="shared")
    b = FakeBackend()
    run_compare(shared, b, log=lambda *a: None, env=ENV)
    assert b.quantized == [("w4a4", "t1"), ("w4a8-gptq", ("t1", "t2"))]  # one GPTQ model for both tasks
    rows = build_grid(shared)
    fp = [r for r in rows if r.quant is None or r.quant == "w4a4"]
    gptq = [r for r in rows if r.quant == "w4a8-gptq"]
    # RTN and FP rows do not calibrate: the same configurations (and ids) as per-task calibration
    assert [r.config_id(shared) for r in fp] == [r.config_id(per_task) for r in fp]
    assert all(r.fingerprint(shared)["calib_tasks"] == ["t1", "t2"] or r.fingerprint(shared)["calib_tasks"] == ("t1", "t2")
               for r in gptq)
    assert not {r.config_id(shared) for r in gptq} & {r.config_id(per_task) for r in gptq}
    assert "calib_tasks" not in gptq[0].fingerprint(per_task)  # per-task keys are those of earlier runs
    with pytest.raises(QAPrunerError, match="calibration must be"):
        cfg_for(tmp_path, calibration="joint")


def test_calib_seed_changes_the_ids_of_calibrated_rows_only(tmp_path):
    base = cfg_for(tmp_path, quant="w4a4,w4a8-gptq", hosts="cls", keeps="0.125")
    other = cfg_for(tmp_path, quant="w4a4,w4a8-gptq", hosts="cls", keeps="0.125", calib_seed=7)
    same = cfg_for(tmp_path, quant="w4a4,w4a8-gptq", hosts="cls", keeps="0.125", calib_seed=0)  # = seed
    rows = build_grid(base)
    assert [r.config_id(same) for r in rows] == [r.config_id(base) for r in rows]
    changed = {r for r in rows if r.config_id(other) != r.config_id(base)}
    assert changed == {r for r in rows if r.quant == "w4a8-gptq"}  # FP and RTN calibrate nothing
    res = run_compare(cfg_for(tmp_path, quant="w4a8-gptq", hosts="cls", keeps="0.125", calib_seed=7, gallery=0),
                      FakeBackend(), log=lambda *a: None, env=ENV)
    assert res["seeds"] == {"subset": 0, "random_host": 0, "calibration_sample": 7, "bootstrap": 0}
    assert "random host, bootstrap), calibration sample seed 7." in (tmp_path / "cmp" / "report.md").read_text()


def test_calibration_sources_share_out_the_samples(monkeypatch):
    from qapruner.eval import prepare
    from qapruner.eval.prepare import calibration_sources

    monkeypatch.setattr(prepare, "calibration_task", lambda t: t)  # synthetic tasks have no training split

    tasks = [synthetic_task("a"), synthetic_task("b"), synthetic_task("c")]
    assert [n for _, n in calibration_sources(tasks, 32)] == [11, 11, 10]
    assert [(t.name, n) for t, n in calibration_sources(tasks[0], 32)] == [("a", 32)]


def test_prune_calibration_rows_models_and_report(tmp_path):
    cfg = cfg_for(tmp_path, tasks="t1,t2", quant="w4a4,w4a8-gptq", hosts="cls,fastv", keeps="0.125",
                  sensitivity="paper,matched", calibration="shared", prune_calibration=True, fp_pruned=False,
                  gallery=0)
    rows = build_grid(cfg)
    pc = [r for r in rows if r.calib_pruned]
    # per task: cls and QA-cls (paper) of the calibrating preset; no fastv (prunes inside the LLM), no matched
    # S^Q (needs the quantized model), nothing for RTN (it calibrates nothing)
    assert sorted((r.task, r.quant, r.host, r.qa, r.sensitivity) for r in pc) == [
        (t, "w4a8-gptq", "cls", qa, "paper" if qa else None) for t in ("t1", "t2") for qa in (False, True)]
    assert all(r.kind == ("q-qa-pc" if r.qa else "q-host-pc") and r.eval_config(cfg).calib_pruned for r in pc)
    assert len({r.config_id(cfg) for r in rows}) == len(rows) and all("-pcal__" in r.config_id(cfg) for r in pc)
    # without the option the grid (and every id) is the one of earlier runs
    plain = cfg_for(tmp_path, tasks="t1,t2", quant="w4a4,w4a8-gptq", hosts="cls,fastv", keeps="0.125",
                    sensitivity="paper,matched", calibration="shared", fp_pruned=False, gallery=0)
    assert [r.config_id(plain) for r in build_grid(plain)] == [r.config_id(cfg) for r in rows if not r.calib_pruned]

    b, logs = FakeBackend(), []
    results = run_compare(cfg, b, log=logs.append, env=ENV)
    assert any("4 quantized model(s)" in line for line in logs)  # the plan line counts every calibration
    # one model per (preset, calibration): the shared dense GPTQ model, then one per pruned calibration, each
    # serving both tasks
    assert b.quantized == [("w4a4", "t1"), ("w4a8-gptq", ("t1", "t2")), ("w4a8-gptq", ("t1", "t2"), ("cls", 0.125, False)),
                           ("w4a8-gptq", ("t1", "t2"), ("cls", 0.125, True))]
    calib = results["calibration_comparisons"]
    assert len(calib) == 4 and {(c["task"], c["qa"]) for c in calib} == {(t, q) for t in ("t1", "t2") for q in (0, 1)}
    by_id = {c["id"]: c for c in results["configs"]}
    for c in calib:
        assert not by_id[c["dense_id"]]["calib_pruned"] and by_id[c["pruned_id"]]["calib_pruned"]
        assert c["diff"] == pytest.approx(by_id[c["pruned_id"]]["accuracy"] - by_id[c["dense_id"]]["accuracy"])
    pc_pairs = [c for c in results["comparisons"] if c["calib_pruned"]]
    assert len(pc_pairs) == 2 and all(by_id[c["host_id"]]["calib_pruned"] for c in pc_pairs)
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "## Calibrating on the pruned token set" in md and "calibrated on pruned tokens" in md
    # the archive regenerates the same comparisons
    from qapruner.compare.regenerate import regenerate

    regenerate(tmp_path / "cmp", log=lambda *a: None)
    again = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert [c["diff"] for c in again["calibration_comparisons"]] == [c["diff"] for c in calib]
