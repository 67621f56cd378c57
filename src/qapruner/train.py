"""Training the testbed's projector + LoRA on the training splits of easy-VQA, Fashion-MNIST and shapes (vision
tower and LLM weights frozen).

Recipe (see docs/testbed.md): cached DINOv2 features; stage 1 (``align.py``) aligns the projector to the
LLM's word embeddings without the LLM; stage 2 (here) trains with the LLM in the loop (asset v2 continues
stage 2 from asset v1, ``init``):
loss = cross-entropy on the answer tokens only;
AdamW with warmup + cosine decay; optional bf16 autocast (evaluation stays fp32);
optional LoRA (rank 8) on every LLM linear, merged into the weights at load time;
training-time visual-token dropout: each batch keeps a random subset of the 256 visual tokens with a ratio
drawn from ``token_keep`` (a random, content-blind subset, so no host pruner is favoured over another),
which both makes the model usable with few tokens and shortens the average training sequence.
"""

from __future__ import annotations

import functools
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file

from .align import (EASY_COLORS, EASY_SHAPES, POSITION_WORDS, AlignConfig, align_projector, check_position_term,
                    dense_loss, easy_vqa_labels, fashion_labels, left_right_direction, position_loss, shapes_labels,
                    word_vectors)
from .tasks.fashion_mnist import CLASSES
from .errors import QAPrunerError
from .models.features import FeatureCache
from .models.llava import pad
from .models.assets import ASSETS
from .models.lora import add_lora, load_lora_state, lora_state
from .models.registry import load_testbed_adapter
from .tasks import load_task
from .tasks.scenes import PATCH_WORDS, patch_labels
from .tasks.shapes import scenes


@dataclass
class TrainConfig:
    steps: int = 300
    checkpoint_every: int = 50  # write the asset every N steps (a usable partial result)
    batch_size: int = 8
    lr: float = 5e-4
    warmup: int = 25
    weight_decay: float = 0.0
    seed: int = 0
    token_keep: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)
    # per-task override of token_keep, e.g. {"shapes": (1.0,)}: a content-blind drop can remove the very object
    # a yes/no question asks about, which turns its label into noise
    task_token_keep: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # per-task question-kind mix, e.g. {"shapes": {"exists": 0.35, "left": 0.35, ...}}: each item of a batch
    # draws its kind first, then an item of that kind ({} = items drawn uniformly)
    kind_weights: dict[str, dict[str, float]] = field(default_factory=dict)
    # images per task (the first N of its train split) and each task's share of the batches
    tasks: dict[str, int] = field(default_factory=lambda: {"easy-vqa": 2700, "fashion-mnist": 3000, "shapes": 4000})
    task_weights: dict[str, float] = field(default_factory=lambda: {"easy-vqa": 0.25, "fashion-mnist": 0.3,
                                                                    "shapes": 0.45})
    init: str = "v1"            # warm start from this committed asset (projector + LoRA); "" = from scratch
    realign: bool = False       # run stage 1 on the warm-started projector too (v5: with align.dense_weight)
    dense_weight: float = 0.0   # stage 2: align's per-patch term on shapes batches too (keeps tokens word-like)
    position_weight: float = 0.0  # stage 2: align's position term on shapes batches too (with dense_weight; v7)
    bf16: bool = False          # bf16 autocast (v1 used it); fp32 here: AVX2-only CPUs run bf16 matmuls ~7.5x slower
    lora_rank: int = 8          # 0 = projector only
    lora_alpha: float = 16.0
    lora_lr: float = 5e-4
    align: AlignConfig = field(default_factory=AlignConfig)  # stage 1; steps=0 skips it
    out: str = "src/qapruner/assets/testbed_v2.safetensors"

    def __post_init__(self):
        check_position_term(self.position_weight, self.dense_weight)

    @classmethod
    def from_recipe(cls, path: str | Path) -> "TrainConfig":
        """The config a committed asset was trained with (its ``.json``); fields it predates keep the value that
        reproduces it (``init`` = "" : v1 was trained from scratch)."""
        saved = dict(json.loads(Path(path).read_text())["config"])
        saved.setdefault("init", "")
        align = AlignConfig(**saved.pop("align"))
        saved["token_keep"] = tuple(saved["token_keep"])
        saved["task_token_keep"] = {k: tuple(v) for k, v in saved.get("task_token_keep", {}).items()}
        return cls(**saved, align=align)


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def _draw_batch(items: list, kind_weights: dict[str, float] | None, n: int, rng: random.Random) -> list:
    """``n`` items drawn with replacement: uniformly, or kind first (``kind_weights``) then an item of that kind."""
    if not kind_weights:
        return [items[rng.randrange(len(items))] for _ in range(n)]
    by_kind = {k: [it for it in items if it.kind == k] for k in kind_weights}
    missing = [k for k, v in by_kind.items() if not v]
    if missing:
        raise ValueError(f"kind_weights names question kinds the task does not have: {missing}")
    kinds = rng.choices(list(by_kind), [kind_weights[k] for k in by_kind], k=n)
    return [by_kind[k][rng.randrange(len(by_kind[k]))] for k in kinds]


def train_projector(cfg: TrainConfig) -> dict:
    init_file = _init_file(cfg.init) if cfg.init else None  # before any loading: a missing file fails at once
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    adapter = load_testbed_adapter(projector=None)  # start from the seeded random projector
    model, tokenizer = adapter.model, adapter.tokenizer
    for p in model.parameters():
        p.requires_grad_(False)
    projector = adapter.parts.projector
    for p in projector.parameters():
        p.requires_grad_(True)

    pools = {}
    for name, n_images in cfg.tasks.items():
        task = load_task(name, "train")
        cache = FeatureCache(adapter, task)
        items = [it for it in task.items if it.image < n_images]
        cache.ensure(sorted({it.image for it in items}))
        pools[name] = (items, cache)
    names = list(pools)
    start_state = load_file(str(init_file)) if init_file else None
    if start_state is not None:  # warm start: stage 1 is already in the starting asset (unless ``realign``)
        projector.load_state_dict({k[len("projector."):]: v for k, v in start_state.items()
                                   if k.startswith("projector.")})
    if cfg.align.steps and (start_state is None or cfg.realign):
        _stage1(adapter, projector, pools, cfg.align)
    weights = [cfg.task_weights[n] for n in names]
    n_tokens = adapter.n_visual
    patch_classes, phrase_unit, lr_unit = _patch_targets(adapter) if cfg.dense_weight else (None, None, None)
    grid = math.isqrt(n_tokens)

    lora = add_lora(adapter.parts.lm, cfg.lora_rank, cfg.lora_alpha, cfg.seed) if cfg.lora_rank else {}
    if start_state is not None and lora:
        load_lora_state(lora, start_state)
    groups = [{"params": list(projector.parameters()), "lr": cfg.lr, "base_lr": cfg.lr}]
    if lora:
        groups.append({"params": [p for m in lora.values() for p in (m.lora_a, m.lora_b)], "lr": cfg.lora_lr,
                       "base_lr": cfg.lora_lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    log, start = [], time.time()
    columns = [TextColumn("train"), BarColumn(), TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.3f}"),
               TimeRemainingColumn()]
    with Progress(*columns) as progress:
        bar = progress.add_task("train", total=cfg.steps, loss=float("nan"))
        for step in range(cfg.steps):
            name = rng.choices(names, weights)[0]
            items, cache = pools[name]
            batch = _draw_batch(items, cfg.kind_weights.get(name), cfg.batch_size, rng)
            keep = rng.choice(cfg.task_token_keep.get(name, cfg.token_keep))
            k = max(1, round(keep * n_tokens))
            feats, _ = cache.get([it.image for it in batch])
            idx = torch.stack([torch.randperm(n_tokens)[:k].sort().values for _ in batch])
            feats = torch.gather(feats, 1, idx.unsqueeze(-1).expand(-1, -1, feats.shape[-1]))
            rows, targets = [], []
            for it in batch:
                prefix = adapter.token_row(it.prompt, k)
                answer = tokenizer(it.answer, add_special_tokens=False)["input_ids"]
                rows.append(prefix + answer)
                targets.append((len(prefix), answer))
            ids, attn = pad(rows, tokenizer.pad_token_id, side="right")  # right padding for training
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * _lr_at(step, cfg) / cfg.lr
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                visual = adapter.project(feats)
                embeds = adapter.splice(ids, visual)
                hidden = adapter.hidden_states(embeds, attn)
                pos = [(i, t0 - 1 + j) for i, (t0, ans) in enumerate(targets) for j in range(len(ans))]
                gold = torch.tensor([tok for _, ans in targets for tok in ans])
                h = hidden[[p[0] for p in pos], [p[1] for p in pos]]
                logits = adapter.logits(h).float()
            loss = torch.nn.functional.cross_entropy(logits, gold)
            if patch_classes is not None and name == "shapes":
                lab = torch.gather(patch_classes[[it.image for it in batch]], 1, idx)
                unit = torch.nn.functional.normalize(visual.float(), dim=-1)
                loss = loss + cfg.dense_weight * dense_loss(unit, lab, phrase_unit, cfg.align.tau)[0]
                if cfg.position_weight:
                    loss = loss + cfg.position_weight * position_loss(unit, idx % grid, lab, lr_unit,
                                                                      cfg.align.position_cos, grid)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
            opt.step()
            log.append({"step": step, "task": name, "keep": keep, "loss": round(loss.item(), 4)})
            progress.update(bar, advance=1, loss=float(np.mean([r["loss"] for r in log[-20:]])))
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                _save(cfg, projector, lora, log, time.time() - start, partial=True)
            if not progress.console.is_terminal and (step + 1) % 25 == 0:
                print(f"step {step + 1}/{cfg.steps} loss(avg20) {np.mean([r['loss'] for r in log[-20:]]):.4f} "
                      f"{time.time() - start:.0f}s", flush=True)
    return _save(cfg, projector, lora, log, time.time() - start)


def _init_file(init: str) -> Path:
    """The warm-start asset of ``init`` (a committed asset's name or a file); one sentence if it is missing (v7's
    recipe starts from the v6 file, which is not committed: the recipe's note says how to make it)."""
    path = ASSETS.get(init, Path(init).expanduser())
    if not path.is_file():
        raise QAPrunerError(f"The warm-start asset '{init}' does not exist; make it first (see the recipe's note) or "
                            "pass --init NAME|FILE.")
    return path


def _stage1(adapter, projector, pools, cfg: AlignConfig) -> None:
    """Align the projector to word embeddings of each image's content words (see align.py); with
    ``cfg.dense_weight`` every shapes scene also aligns each patch to the phrase of the object under it."""
    label_fns = {"easy-vqa": easy_vqa_labels, "fashion-mnist": fashion_labels, "shapes": shapes_labels}
    align_pools = []
    for name, (items, cache) in pools.items():
        labels = {im: lab for im, lab in label_fns[name](items).items() if lab}
        if name == "shapes" and cfg.dense_weight:
            images = sorted({it.image for it in items})
            classes = _train_patch_classes()
            align_pools.append((cache, {im: labels.get(im, {}) for im in images}, {im: classes[im] for im in images}))
        else:
            align_pools.append((cache, labels))
    emb, tokenizer = adapter.parts.embed.weight.detach(), adapter.tokenizer
    groups = {"color": (EASY_COLORS, word_vectors(emb, tokenizer, EASY_COLORS)),
              "shape": (EASY_SHAPES, word_vectors(emb, tokenizer, EASY_SHAPES)),
              "class": (CLASSES, word_vectors(emb, tokenizer, CLASSES)),
              "patch": (PATCH_WORDS, word_vectors(emb, tokenizer, PATCH_WORDS)),
              "position": (POSITION_WORDS, word_vectors(emb, tokenizer, POSITION_WORDS))}
    word_norm = emb.norm(dim=1).mean().item()
    align_projector(projector, align_pools, groups, word_norm, cfg, log=lambda m: print(m, flush=True))


@functools.cache
def _train_patch_classes() -> torch.Tensor:
    """Per train scene, the class of each patch (-1 on an object's rim); computed once for stages 1 and 2."""
    return torch.from_numpy(patch_labels(scenes("train"), edge=-1))


def _patch_targets(adapter) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per train scene, the class of each patch (-1 on an object's rim); the unit phrase embeddings; the unit
    direction from "left" to "right" (the position term's)."""
    classes = _train_patch_classes()
    emb = adapter.parts.embed.weight.detach()
    phrases = word_vectors(emb, adapter.tokenizer, PATCH_WORDS)
    position = left_right_direction(word_vectors(emb, adapter.tokenizer, POSITION_WORDS))
    return classes, torch.nn.functional.normalize(phrases, dim=-1), position


def _save(cfg: TrainConfig, projector, lora, log: list[dict], seconds: float, partial: bool = False) -> dict:
    """Write the asset (projector + LoRA), its recipe/summary JSON and the loss log; atomic replace."""
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {f"projector.{k}": v.detach().clone().contiguous() for k, v in projector.state_dict().items()}
    state.update(lora_state(lora))
    tmp = out.with_name(out.name + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(out)
    summary = {"config": asdict(cfg), "steps_done": len(log), "partial": partial, "seconds": round(seconds, 1),
               "final_loss_avg20": float(np.mean([r["loss"] for r in log[-20:]])), "torch": torch.__version__}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    out.with_suffix(".log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n")
    return summary
