"""Running the grid: resumable, one quantized model per preset (per task, per pruned calibration: ``grid.model_key``),
a progress bar over configurations.

Layout of ``--out DIR``::

    items/<config-id>.jsonl         per-item predictions (the runner's resumable store; header pins the config)
    items/<config-id>.summary.json  written when a configuration is complete: a rerun skips it entirely
    gallery/data.json, gallery/*.png   S^Q of the gallery images and the images as the model saw them

Everything model-specific goes through a ``Backend`` so the orchestration is testable without a model.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np

from .. import parallel
from ..eval.store import read_items
from ..io import write_json
from ..runinfo import cpu_capability
from ..tasks.base import Task
from .archive import restore
from .config import CompareConfig
from .gallery import gallery_plan, gallery_up_to_date, model_grid, save_gallery
from .grid import Row, build_grid, model_key
from .plan import plan_line
from .resume import Checkpointer, finished_summary, rerun_mixed_kernels, summary_path


class Backend:
    """The real thing: qapruner's model registry, quantization engine and evaluation runner."""

    def load_task(self, name: str) -> Task:
        from ..tasks import load_task

        return load_task(name)

    def load_model(self, spec: str):
        from ..models.registry import load_model

        with parallel.main_first():  # several processes: the main one downloads / converts first
            return load_model(spec)

    def calibrates(self, preset: str) -> bool:
        """True when the preset calibrates on task data (then a quantized copy is built per task)."""
        from ..quant import QuantConfig

        return QuantConfig.from_preset(preset).needs_calibration

    def check_preset(self, preset: str) -> None:
        from ..quant import QuantConfig

        QuantConfig.from_preset(preset)

    def check_model(self, adapter, cfg: CompareConfig) -> None:
        """Checks that need the loaded model, before any configuration runs."""
        from ..eval.config import EvalConfig
        from ..prune import PruneConfig

        if "fastv" in cfg.hosts:
            EvalConfig(prune=PruneConfig("fastv", 0.5, layer_k=cfg.layer_k)).check_model(adapter)

    def quantize(self, adapter, preset: str, task, cfg: CompareConfig, progress=None, calib_prune=None):
        from ..quant import QuantConfig

        q, info = parallel.quantized_copy(adapter, QuantConfig.from_preset(preset), task, cfg.calib_samples,
                                          cfg.calibration_seed, progress=progress, calib_prune=calib_prune)
        if cfg.gemm == "integer":
            from ..quant.integer_gemm import use_integer_gemm

            info = dict(info or {}, integer_gemm_layers=use_integer_gemm(q.model))
        return q, info

    def evaluate(self, adapter, task: Task, ecfg, items_path: Path, progress, label: str) -> dict:
        from ..eval.runner import Evaluator

        key = id(adapter.model)
        if getattr(self, "_evaluator_key", None) != key:  # one Evaluator per model: its feature caches are reused
            self._evaluator, self._evaluator_key = Evaluator(adapter), key
        return self._evaluator.run(task, ecfg, items_path, progress, label)

    def gallery_data(self, adapter, task: Task, items, cfg: CompareConfig) -> dict:
        """S^Q of each gallery image's visual tokens (as this model's projector gives them) and the image as
        the vision tower saw it (after resize / crop)."""
        import torch

        from ..models.features import FeatureCache
        from ..prune.sensitivity import token_sensitivity

        cache = FeatureCache(adapter, task)
        ip = adapter.processor.image_processor
        mean = np.asarray(getattr(ip, "image_mean", [0.5] * 3), np.float32)[:, None, None]
        std = np.asarray(getattr(ip, "image_std", [0.5] * 3), np.float32)[:, None, None]
        out = {}
        with torch.no_grad():
            for it in items:
                feats, _ = cache.get([it.image])
                visual = adapter.project(feats)
                err = adapter.matched_error(visual) if cfg.gallery_sensitivity == "matched" else None
                sq = token_sensitivity(visual, cfg.gallery_sensitivity, cfg.sens_bits, cfg.sens_group_size, error=err)[0]
                px = ip([task.load_image(it.image)], return_tensors="pt")["pixel_values"][0].float().numpy()
                img = np.clip((px * std + mean).transpose(1, 2, 0), 0, 1)
                out[it.uid] = {"sq": sq.cpu().tolist(), "image": (img * 255).astype(np.uint8)}
        return out

    def cast(self, adapter, dtype: str, copy: bool):
        """The model to run rows in ``dtype`` (a cast copy of the FP model, so later quantized copies still
        start from fp32; quantized copies are cast in place)."""
        if dtype == "float32":
            return adapter
        import copy as _copy

        import torch

        model = _copy.deepcopy(adapter.model) if copy else adapter.model
        return adapter.with_model(model).cast(getattr(torch, dtype))

    def release(self, loaded) -> None:
        self._evaluator = self._evaluator_key = None
        del loaded
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def run_grid(cfg: CompareConfig, backend: Backend, out_dir: Path, progress=None, log=print) -> dict:
    """Run every unfinished configuration; return {"tasks", "rows", "configs", "gallery"} (no statistics)."""
    out_dir = Path(out_dir)
    items_dir = out_dir / "items"
    items_dir.mkdir(parents=True, exist_ok=True)
    if parallel.is_main():  # a committed checkpoint or final archive: resume from it (fills gaps, never overwrites)
        added = restore(out_dir)
        if added:
            log(f"{added} finished configurations unpacked from {out_dir}'s archives into {items_dir}")
    for q in cfg.quant:
        backend.check_preset(q)  # fail on a bad preset before loading anything
    tasks = {}
    for name in cfg.tasks:  # --limit is "up to N items per task" here: tasks of one grid differ in size
        full = backend.load_task(name)
        if cfg.limit is not None and cfg.limit > len(full.items):
            log(f"{name} has {len(full.items)} items, fewer than --limit {cfg.limit}: all of them are used")
        tasks[name] = full.subset(min(cfg.limit, len(full.items)) if cfg.limit else None, cfg.seed)
    rows = build_grid(cfg)
    ids = {r: r.config_id(cfg) for r in rows}
    summaries = {r: finished_summary(items_dir, ids[r], r.fingerprint(cfg)) for r in rows}
    if parallel.is_main():
        rerun_mixed_kernels(rows, summaries, ids, items_dir, cfg, backend, log)
    plan = gallery_plan(cfg, tasks)
    gallery_file = out_dir / "gallery" / "data.json"
    need_gallery = plan is not None and not gallery_up_to_date(gallery_file, plan, cfg)
    # several processes run every configuration together: all of them follow the main process's view
    finished, need_gallery = parallel.broadcast(({ids[r]: summaries[r] for r in rows}, need_gallery))
    summaries = {r: finished[ids[r]] for r in rows}
    todo = [r for r in rows if summaries[r] is None]
    log(f"{len(rows)} configurations, {len(rows) - len(todo)} already finished, {len(todo)} to run")
    if todo:
        log(plan_line(todo, tasks, cfg, backend))

    fp = model = None
    done = 0
    saver = Checkpointer(out_dir, enabled=bool(todo) and parallel.is_main())
    bar = progress.add_task("configurations", total=len(rows), completed=len(rows) - len(todo)) if progress else None
    try:
        for quant in [None, *cfg.quant]:
            group = [r for r in todo if r.quant == quant]
            gallery_here = need_gallery and quant == plan.quant
            if not group and not gallery_here:
                continue
            if fp is None:
                fp = backend.load_model(cfg.model)
                backend.check_model(fp, cfg)
            calibrates = quant is not None and backend.calibrates(quant)
            by_key: dict[tuple, list[Row]] = {}  # one quantized copy per key, in row order
            for r in group:
                by_key.setdefault(model_key(r, cfg, calibrates), []).append(r)
            gallery_key = model_key(Row(plan.task, quant), cfg, calibrates) if gallery_here else None
            if gallery_key is not None and gallery_key not in by_key:
                by_key = {gallery_key: [], **by_key}
            for key, key_rows in by_key.items():
                model, qinfo = _prepare(backend, fp, cfg, quant, key, key_rows, tasks, progress, log)
                for tname, task in tasks.items():
                    task_rows = [r for r in key_rows if r.task == tname]
                    for r in task_rows:
                        cid = ids[r]
                        s = backend.evaluate(model, task.blank() if r.blank else task, r.eval_config(cfg),
                                             items_dir / f"{cid}.jsonl", progress, f"{tname} · {r.label}")
                        s.update({"config_id": cid, "fingerprint": r.fingerprint(cfg), "quant_info": qinfo,
                                  "cpu_capability": cpu_capability()})
                        if parallel.is_main():
                            write_json(summary_path(items_dir, cid), s)
                        summaries[r] = s
                        done += 1
                        log(f"[{done}/{len(todo)}] {tname} · {r.label}: accuracy {s['accuracy']:.3f} (n = {s['n']}, "
                            f"{s['seconds']:.0f} s)")
                        saver.maybe()
                        if progress:
                            progress.advance(bar)
                    if key == gallery_key and tname == plan.task and parallel.is_main():
                        items = [it for it in task.items if it.uid in set(plan.uids)]
                        data = backend.gallery_data(model, task, items, cfg)
                        save_gallery(gallery_file, plan, cfg, data, items, model_grid(model))
                backend.release(model)  # at most one quantized copy alive at a time
                model = None
    finally:  # also on Ctrl-C: what finished is in the checkpoint
        saver.final()
    if progress and bar is not None:
        progress.remove_task(bar)

    configs = [{"id": ids[r], "row": r.to_dict(), "summary": summaries[r]} for r in rows]
    return {"tasks": tasks, "rows": rows, "configs": configs, "computed": len(todo),
            "gallery": (plan, gallery_file) if plan is not None else None}


def _prepare(backend: Backend, fp, cfg: CompareConfig, quant: str | None, key: tuple, key_rows: list[Row],
             tasks: dict[str, Task], progress, log):
    """The model of one ``grid.model_key``: the FP model (cast), or a quantized copy calibrated on its task (or
    all tasks when shared) and, for prune-calibrated rows, on the token sets of their pruning configuration."""
    if quant is None:
        return backend.cast(fp, cfg.dtype, copy=True), None
    _, tname, pruned = key
    shared = tname is None and cfg.calibration == "shared" and backend.calibrates(quant)
    calib_prune = key_rows[0].prune_config(cfg) if pruned is not None else None
    p = calib_prune
    log(f"quantizing {cfg.model} with {quant}" + (f" (calibrated on {tname})" if tname else "")
        + (f" (calibrated on {', '.join(tasks)})" if shared else "")
        + (f", on the tokens {'QA-' if p.qa else ''}{p.host} keeps at {p.keep:g}" if p else ""))
    source = list(tasks.values()) if shared else tasks[tname] if tname else next(iter(tasks.values()))
    q, info = backend.quantize(fp, quant, source, cfg, progress, calib_prune=calib_prune)
    return backend.cast(q, cfg.dtype, copy=False), info


def correctness(configs: list[dict], tasks: dict[str, Task], items_dir: Path) -> tuple[dict, dict]:
    """Per config id: {uid: correct} and {uid: kept indices} restricted to the task subset's items."""
    corr, kept = {}, {}
    for c in configs:
        uids = {it.uid for it in tasks[c["row"]["task"]].items}
        path = Path(items_dir) / f"{c['id']}.jsonl"
        rows = [r for r in read_items(path) if r["uid"] in uids]
        corr[c["id"]] = {r["uid"]: bool(r["correct"]) for r in rows}
        kept[c["id"]] = {r["uid"]: r["kept"] for r in rows if "kept" in r}
    return corr, kept
