"""Stage 1 of the testbed recipe: align the projector to the LLM's word embeddings, without the LLM.

Why: trained end-to-end from a random start on a 2-core CPU, the projector did not learn to carry the image
(Fashion-MNIST loss stayed at ln 10 for 125 steps while its output norm grew to ~60x that of a word
embedding). LLaVA's own stage 1 aligns the projector on captions; our tasks have no captions, but every
training image has content words derived from its labels (easy-VQA: its colour and shape, read off its
training questions; Fashion-MNIST: its class name). Stage 1 makes visual tokens *look like* those words:

    c_ik   = cos(P(f_i), e_k) / tau                      token i vs. candidate word k (word-embedding mean)
    s_k    = tau_p * logsumexp_i(c_ik / tau_p) - const   smooth max over tokens (multiple-instance pooling:
                                                         only the tokens that show the object need to match)
    L      = CE(s, label) per label group  +  lambda * mean_i (|P(f_i)| / |e| - 1)^2
             [+ mu * (CE_obj + CE_bg) / 2]                per-patch term (``dense_weight`` = mu, v5 on)
             [+ nu * mean_obj (cos(P(f_i), u) - rho * x_i)^2] position term (``position_weight`` = nu, v7)
                 u = e(right) - e(left), x_i = the patch's column scaled to [-1, 1], rho = ``position_cos``

The optional per-patch term uses what only the ``shapes`` scenes know: which object covers each patch. Each
patch token is classified by cos / tau against "background" and the 24 "<colour> <shape>" phrases (the mean
embedding of the phrase's tokens); object and background patches are averaged separately so the 85 % of
background patches do not dominate; patches on an object's rim are ignored. The projector loses most of the
column of an object patch (a linear read-out, `benchmarks/shapes_feature_probe.py --column`: R^2 0.93 from the
raw DINOv2 features, 0.53 from v2's tokens, 0.29 from v6's after the per-patch term), and left/right questions
stay at chance; the position term puts the column back, along the word direction from "left" to "right".

The norm term keeps visual tokens at the scale of word embeddings (mean norm ~3.2 for SmolLM2-135M).
It runs on cached features in a few minutes; stage 2 (``train.py``) then fine-tunes with the LLM in the loop.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import QAPrunerError
from .tasks.fashion_mnist import CLASSES

EASY_COLORS = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")
EASY_SHAPES = ("circle", "rectangle", "triangle")
POSITION_WORDS = ("left", "right")  # the position term's direction runs from the first to the second


@dataclass
class AlignConfig:
    steps: int = 1000
    batch_size: int = 64
    tokens_per_image: int = 64   # random token subset per image per step (speed)
    lr: float = 2e-3
    tau: float = 0.1             # cosine temperature
    tau_pool: float = 0.2        # smooth-max pooling temperature over tokens
    norm_weight: float = 1.0
    dense_weight: float = 0.0    # per-patch term on pools that carry patch labels (0 = off: assets v1, v2)
    position_weight: float = 0.0  # position term on those pools' object patches (0 = off: assets v1-v6)
    position_cos: float = 0.3    # rho: target cosine with the left->right direction at the image's edges
    seed: int = 0

    def __post_init__(self):
        check_position_term(self.position_weight, self.dense_weight)


def check_position_term(position_weight: float, dense_weight: float) -> None:
    if position_weight and not dense_weight:
        raise QAPrunerError("position_weight needs dense_weight > 0: the position term uses the per-patch labels.")


def easy_vqa_labels(items) -> dict[int, dict[str, str]]:
    """Per image: its colour and shape, read off its open questions only ("what is the red shape?" ->
    circle; "what color is the triangle?" -> yellow): their answer and the colour/shape word in the question.
    Yes/no questions are skipped because of negations ("is no yellow shape present?" -> yes)."""
    labels: dict[int, dict[str, str]] = {}
    for it in items:
        if it.answer not in EASY_COLORS + EASY_SHAPES:
            continue
        words = set(re.findall(r"[a-z]+", (it.question + " " + it.answer).lower()))
        lab = labels.setdefault(it.image, {})
        for c in EASY_COLORS:
            if c in words:
                lab["color"] = c
        for s in EASY_SHAPES:
            if s in words:
                lab["shape"] = s
    return labels


def shapes_labels(items) -> dict[int, dict[str, str]]:
    """Per single-object scene of the ``shapes`` task: its colour and shape, from its "What shape is the <colour>
    object?" question (scenes with several objects have no single word per group and are left out)."""
    single = {it.image for it in items if it.kind == "count" and it.answer == "one"}
    labels: dict[int, dict[str, str]] = {}
    for it in items:
        if it.kind == "shape" and it.image in single:
            color = re.match(r"What shape is the (\w+) object", it.question).group(1)
            labels[it.image] = {"color": color, "shape": it.answer}
    return labels


def fashion_labels(items) -> dict[int, dict[str, str]]:
    return {it.image: {"class": CLASSES["ABCDEFGHIJ".index(it.answer)]} for it in items}


def word_vectors(emb: torch.Tensor, tokenizer, words) -> torch.Tensor:
    """Mean input embedding (rows of ``emb``) of each word's tokens (with a leading space, as inside a sentence)."""
    return torch.stack([emb[tokenizer(" " + w.lower(), add_special_tokens=False)["input_ids"]].mean(0)
                        for w in words])


def dense_loss(t: torch.Tensor, lab: torch.Tensor, unit: torch.Tensor, tau: float) -> tuple[torch.Tensor, float]:
    """Mean of the object-patch and the background-patch cross-entropy (``lab`` -1 = ignored patch), and the
    accuracy on object patches (nan when the batch has none)."""
    logits = (t @ unit.T / tau).flatten(0, 1)
    lab = lab.flatten()
    ce = F.cross_entropy(logits, lab, ignore_index=-1, reduction="none")
    parts = [ce[m].mean() for m in (lab > 0, lab == 0) if m.any()]
    obj = lab > 0
    acc = (logits[obj].argmax(-1) == lab[obj]).float().mean().item() if obj.any() else float("nan")
    return torch.stack(parts).mean(), acc


def position_loss(t: torch.Tensor, cols: torch.Tensor, lab: torch.Tensor, direction: torch.Tensor, rho: float,
                  grid: int) -> torch.Tensor:
    """Mean over object patches (``lab`` > 0) of (cos(token, u) - rho * x)^2, x = 2 col / (grid - 1) - 1: object
    tokens on the left look like "left", on the right like "right", in proportion to their column. ``t``: unit
    tokens (B, T, D); ``cols``: their columns (B, T); ``direction``: unit u = e(right) - e(left)."""
    obj = lab > 0
    if not obj.any():
        return t.new_zeros(())
    x = 2 * cols.to(t.dtype) / (grid - 1) - 1
    return ((t @ direction - rho * x)[obj] ** 2).mean()


def left_right_direction(vectors: torch.Tensor) -> torch.Tensor:
    """The unit vector from the first word vector to the second (POSITION_WORDS: left -> right)."""
    return F.normalize(vectors[1] - vectors[0], dim=0)


def _mean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def align_projector(projector, pools, groups, word_norm: float, cfg: AlignConfig, log=print) -> list[dict]:
    """pools: list of (cache, {image: {group: word}}) or (cache, {image: ...}, {image: patch classes}) with
    patch classes indexing ``groups["patch"]``; groups: {group: (words, word_vectors)}, with
    ``groups["position"]`` (POSITION_WORDS) when ``cfg.position_weight``."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    opt = torch.optim.AdamW(projector.parameters(), lr=cfg.lr, weight_decay=0.0)
    index = {g: {w: k for k, w in enumerate(words)} for g, (words, _) in groups.items()}
    unit = {g: F.normalize(vec, dim=-1) for g, (_, vec) in groups.items()}
    direction = left_right_direction(groups["position"][1]) if cfg.position_weight else None
    history = []
    for step in range(cfg.steps):
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        cache, labels, *patches = pools[step % len(pools)]
        patches = patches[0] if patches and cfg.dense_weight else None
        images = rng.sample(sorted(labels), min(cfg.batch_size, len(labels)))
        feats, _ = cache.get(images)
        n = feats.shape[1]
        idx = torch.stack([torch.randperm(n)[: cfg.tokens_per_image] for _ in images])
        feats = torch.gather(feats, 1, idx.unsqueeze(-1).expand(-1, -1, feats.shape[-1]))
        tokens = projector(feats)                                         # (B, T, D)
        norm_loss = ((tokens.norm(dim=-1) / word_norm - 1) ** 2).mean()
        t = F.normalize(tokens, dim=-1)
        ce, acc = [], []
        for g in (g for g in groups if g not in ("patch", "position")):
            rows = [b for b, im in enumerate(images) if g in labels[im]]
            if not rows:
                continue
            cos = t[rows] @ unit[g].T / cfg.tau                           # (b, T, K)
            scores = cfg.tau_pool * torch.logsumexp(cos / cfg.tau_pool, dim=1)
            gold = torch.tensor([index[g][labels[images[b]][g]] for b in rows])
            ce.append(F.cross_entropy(scores, gold))
            acc.append((scores.argmax(-1) == gold).float().mean().item())
        loss = cfg.norm_weight * norm_loss + (torch.stack(ce).mean() if ce else 0.0)
        record = {}
        if patches is not None:
            lab = torch.gather(torch.stack([patches[im] for im in images]), 1, idx)
            dense, record["patch_acc"] = dense_loss(t, lab, unit["patch"], cfg.tau)
            loss = loss + cfg.dense_weight * dense
            if cfg.position_weight:
                grid = math.isqrt(n)
                pos = position_loss(t, idx % grid, lab, direction, cfg.position_cos, grid)
                loss = loss + cfg.position_weight * pos
                record["position_loss"] = round(pos.item(), 4)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append({"step": step, "loss": round(loss.item(), 4), "norm_loss": round(norm_loss.item(), 4),
                        "acc": round(sum(acc) / len(acc), 3) if acc else float("nan"), **record})
        if (step + 1) % 50 == 0:
            recent = history[-50:]
            mean = {k: _mean([r.get(k, math.nan) for r in recent])
                    for k in ("loss", "acc", "patch_acc", "position_loss")}
            log(f"align {step + 1}/{cfg.steps} loss {mean['loss']:.3f} acc {mean['acc']:.3f} "
                + (f"patch-acc {mean['patch_acc']:.3f} " if not math.isnan(mean["patch_acc"]) else "")
                + (f"position-loss {mean['position_loss']:.4f} " if not math.isnan(mean["position_loss"]) else "")
                + f"norm-loss {recent[-1]['norm_loss']:.3f}")
    return history
