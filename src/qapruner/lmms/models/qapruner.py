"""``--model qapruner``: lmms-eval's model interface over :class:`qapruner.lmms.engine.Engine`.

``loglikelihood`` returns lmms-eval's convention, (negative log-likelihood, is-greedy): lmms-eval's
``multiple_choice`` picks the candidate with the smallest value (each pair wrapped, see ``loglikelihood``). Requests are batched in document order
(``batch_size`` documents per forward pass, as ``qapruner eval`` batches its items), never re-sorted, so a
qapruner task's batches are the batches of ``qapruner eval --batch-size N``.
"""

from __future__ import annotations

import json

from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from loguru import logger
from PIL import Image
from tqdm import tqdm

from ...errors import QAPrunerError
from ..engine import Engine, Visual
from ..options import parse_options


class QAPruner(lmms):
    is_simple = True

    def __init__(self, **model_args) -> None:
        super().__init__()
        self.options = parse_options(model_args)
        self.engine = Engine(self.options)
        self.batch_size_per_gpu = self.options.config.batch_size

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self):
        return self.engine.base.device

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    # ---- one request's inputs -----------------------------------------------------------------------------
    def _inputs(self, context: str, doc_to_visual, doc_id, task: str, split: str) -> tuple[Visual, str, str]:
        """(image, prompt, question) of a request: the document's qapruner item when it is one (its image from
        the feature cache), else its single PIL image; the question (for text-relevance hosts) is the
        document's ``question`` field when it has one, else the prompt."""
        doc = self.task_dict[task][split][doc_id]
        prompt = context.replace(self.engine.base.processor.image_token, "")  # the image goes first, as in LLaVA
        question = doc.get("question") if isinstance(doc.get("question"), str) else prompt
        if "qapruner_task" in doc and "image" in doc and self.engine.feature_cache:
            return Visual(task=doc["qapruner_task"], index=int(doc["image"])), prompt, question
        visuals = _flatten(doc_to_visual(doc) if doc_to_visual is not None else [])
        if len(visuals) != 1 or not isinstance(visuals[0], Image.Image):
            kinds = ", ".join(sorted({type(v).__name__ for v in visuals})) or "none"
            raise QAPrunerError(f"Document {doc_id} of {task} has {len(visuals)} visual(s) ({kinds}); qapruner's "
                                "model path takes exactly one image per question (no video, audio or text-only).")
        ours = "qapruner_task" in doc  # feature_cache=false: its PIL image, and still its calibration task
        return Visual(doc.get("qapruner_task"), int(doc["image"]) if ours else None, visuals[0]), prompt, question

    # ---- lmms-eval's verbs --------------------------------------------------------------------------------
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        groups: dict[tuple, dict] = {}  # one entry per (document, context): the candidates share its forward pass
        for n, req in enumerate(requests):
            if len(req.args) < 6:
                raise QAPrunerError("loglikelihood requests without a document (e.g. acc_mutual_info's "
                                    "unconditional ones) are not supported by --model qapruner.")
            context, target, doc_to_visual, doc_id, task, split = req.args[:6]
            key = (task, split, doc_id, context)
            if key not in groups:
                visual, prompt, question = self._inputs(context, doc_to_visual, doc_id, task, split)
                groups[key] = {"visual": visual, "prompt": prompt, "question": question, "conts": []}
            doc = self.task_dict[task][split][doc_id]
            text = target if isinstance(target, str) else target(doc)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            groups[key]["conts"].append((n, ids))
        out: list = [None] * len(requests)
        entries = list(groups.values())
        for s in tqdm(range(0, len(entries), self.batch_size), disable=self.rank != 0, desc="qapruner loglikelihood"):
            batch = entries[s : s + self.batch_size]
            scores = self.engine.score([g["visual"] for g in batch], [g["prompt"] for g in batch],
                                       [g["question"] for g in batch], [[ids for _, ids in g["conts"]] for g in batch])
            for g, row in zip(batch, scores):
                for (n, _), value in zip(g["conts"], row):
                    out[n] = value
        # lmms-eval 0.7.3's evaluator passes every response through unwrap_generation_output, which turns a bare
        # (float, bool) tuple into its str(), so multiple_choice cannot read it; a GenerationResult is unwrapped to
        # whatever it holds, so the tuple arrives intact (and still would once the evaluator is fixed).
        return [GenerationResult(text=value) for value in out]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        groups: dict[str, list[int]] = {}  # requests with the same generation settings, in document order
        for n, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(n)
        out: list = [None] * len(requests)
        for indices in groups.values():
            kwargs = dict(requests[indices[0]].args[1] or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_new_tokens") or self.options.config.max_new_tokens)
            if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0) > 0 or int(kwargs.get("num_beams") or 1) > 1:
                logger.warning("--model qapruner decodes greedily (as qapruner eval); do_sample / temperature / "
                               "num_beams are ignored.")
            for s in tqdm(range(0, len(indices), self.batch_size), disable=self.rank != 0, desc="qapruner generate"):
                chunk = indices[s : s + self.batch_size]
                inputs = [self._inputs(requests[n].args[0], *requests[n].args[2:6]) for n in chunk]
                texts = self.engine.generate([v for v, _, _ in inputs], [p for _, p, _ in inputs],
                                             [q for _, _, q in inputs], max_new)
                for n, text in zip(chunk, texts):
                    out[n] = _cut(text, until)
        return out

    def generate_until_multi_round(self, requests) -> list[str]:
        raise QAPrunerError("--model qapruner answers single-turn questions; multi-round generation is not supported.")


def _flatten(visuals) -> list:
    flat = []
    for v in visuals or []:
        flat.extend(_flatten(v) if isinstance(v, (list, tuple)) else [v])
    return flat


def _cut(text: str, until: list[str]) -> str:
    """``text`` up to the first stop sequence (lmms-eval's ``until``)."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text
