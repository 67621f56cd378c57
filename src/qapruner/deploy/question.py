"""The instruction text of a prompt inside ``generate``: the user text after the image placeholder, cut out of
the token ids with the processor's chat template (see ``deploy.generate``)."""

from __future__ import annotations

from ..models.llava import LlavaAdapter

_SENTINEL = "\u2063qapruner-question\u2063"


def template_parts(adapter: LlavaAdapter) -> tuple[str, str]:
    """The text the processor's chat template puts between the image and the user text, and after the user text
    (e.g. ``"\\n"`` and ``"<|im_end|>\\n<|im_start|>assistant\\n"``); ("", "") without a usable template."""
    try:
        text = adapter.user_turn(_SENTINEL)
    except Exception:  # noqa: BLE001  (no chat template: the prompt is free text)
        return "", ""
    image = adapter.tokenizer.convert_ids_to_tokens(adapter.image_token_id)
    if _SENTINEL not in text or not isinstance(image, str) or image not in text.split(_SENTINEL)[0]:
        return "", ""
    before, after = text.split(_SENTINEL, 1)
    return before.rsplit(image, 1)[1], after


def question_ids(adapter: LlavaAdapter, ids_after_image: list[int]) -> list[int]:
    """The token ids of a prompt's user text, given its token ids after the image placeholder (see the module
    docstring): the template's closing tokens are removed (matched as tokens; else as text, then re-tokenized),
    then its opening text. Without a match: every token after the image but the special ones."""
    tok = adapter.tokenizer
    infix, suffix = template_parts(adapter)
    ids = list(ids_after_image)

    def encode(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"] if text else []

    suffix_ids = encode(suffix)
    if suffix_ids and ids[-len(suffix_ids):] == suffix_ids:
        ids = ids[: -len(suffix_ids)]
        infix_ids = encode(infix)
        return ids[len(infix_ids):] if infix_ids and ids[: len(infix_ids)] == infix_ids else ids
    text = tok.decode(ids, skip_special_tokens=False)
    if suffix.strip() and suffix.strip() in text:
        text = text[: text.rfind(suffix.strip())]
        if infix and text.startswith(infix):
            text = text[len(infix):]
        return encode(text.strip())
    special = set(tok.all_special_ids) - {tok.unk_token_id}
    return [i for i in ids if i not in special]
