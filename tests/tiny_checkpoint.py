"""A tiny, randomly initialised llava-hf checkpoint built locally (no downloads): exercises exactly the
loading path of real hub models (``--model PATH``) in tests and smoke runs."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import (BitImageProcessorPil, Dinov2Config, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                          LlavaProcessor, PreTrainedTokenizerFast)

from qapruner.models.testbed import CHAT_TEMPLATE, IMAGE_TOKEN

SPECIALS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN]
WORDS = (
    "user assistant what is the shape color of in image there a not does contain item clothing answer question "
    "using single word or phrase with option's letter from given choices directly option s "
    "circle green red gray yes teal black rectangle yellow triangle brown blue no "
    "t top trouser pullover dress coat sandal shirt sneaker bag ankle boot "
    "a b c d e f g h i j ? . , ' : - / \n"
).split(" ")


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    words = [w for w in dict.fromkeys(WORDS) if w and w not in ("\n",)]
    vocab = {tok: i for i, tok in enumerate(SPECIALS + words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()  # \w+ | [^\w\s]+
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>",
                                  bos_token=None)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", IMAGE_TOKEN]})
    return tok


def build_tiny_llava(out: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """Write a tiny LLaVA (Dinov2 56 px → 16 visual tokens, Llama ``layers``×``hidden``) to ``out``."""
    out = Path(out)
    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    vision = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          patch_size=14, image_size=56)
    text = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=2 * hidden, vocab_size=len(tok), tie_word_embeddings=True,
                       pad_token_id=tok.pad_token_id, max_position_embeddings=512)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                         projector_hidden_act="gelu", vision_feature_select_strategy="default", vision_feature_layer=-1,
                         image_seq_length=16, tie_word_embeddings=True)
    model = LlavaForConditionalGeneration(config).eval()
    ip = BitImageProcessorPil(do_resize=True, size={"height": 56, "width": 56}, do_center_crop=False,
                              do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_convert_rgb=True)
    processor = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                               chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


COLORS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 20)}


def write_color_task(root: Path, items: int = 12, size: int = 40, square: int = 18, offsets: int = 20) -> Path:
    """A multiple-choice JSONL task with real PNG files: a colored square on white, "what color is the shape?"."""
    import json

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    lines = []
    for i in range(items):
        name = list(COLORS)[i % 4]
        arr = np.full((size, size, 3), 255, np.uint8)
        x, y = rng.integers(0, offsets, 2)
        arr[y : y + square, x : x + square] = COLORS[name]
        Image.fromarray(arr).save(root / f"img{i}.png")
        lines.append({"image": f"img{i}.png", "question": "what color is the shape?", "choices": list(COLORS),
                      "answer": name})
    path = root / "task.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def tiny_clip_tokenizer():
    """A character-level CLIP tokenizer (every character is a token, ``</w>`` marks a word end): CLIP's own
    normalisation, pre-tokenisation, start / end tokens and pooling on the end token, with a 84-token vocabulary."""
    import string

    from transformers import CLIPTokenizerFast

    chars = list(string.ascii_lowercase) + list("?.,'!0123456789")
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizerFast(vocab=vocab, merges=[])


def build_tiny_clip_llava(out: str | Path, seed: int = 0, text_positions: int = 8) -> tuple[Path, Path]:
    """A tiny llava-1.5-shaped model with a CLIP vision tower (56 px, patch 14: 16 patches + [CLS], features of
    layer -2 without [CLS], as llava-1.5) in ``out/llava``, and the CLIP model it came from (same vision weights,
    a text tower of ``text_positions`` positions, projections to 16 dims) in ``out/clip``."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    out = Path(out)
    torch.manual_seed(seed)
    vision = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, patch_size=14,
                  image_size=56, projection_dim=16)
    ctok = tiny_clip_tokenizer()
    clip = CLIPModel(CLIPConfig(
        text_config=CLIPTextConfig(vocab_size=len(ctok), hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=48, max_position_embeddings=text_positions, projection_dim=16,
                                   eos_token_id=ctok.eos_token_id, bos_token_id=ctok.bos_token_id, pad_token_id=0),
        vision_config=CLIPVisionConfig(**vision), projection_dim=16)).eval()
    clip.save_pretrained(out / "clip")
    ctok.save_pretrained(out / "clip")

    tok = tiny_tokenizer()
    text = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=128, vocab_size=len(tok), tie_word_embeddings=True,
                       pad_token_id=tok.pad_token_id, max_position_embeddings=512)
    config = LlavaConfig(vision_config=CLIPVisionConfig(**vision), text_config=text,
                         image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN), projector_hidden_act="gelu",
                         vision_feature_select_strategy="default", vision_feature_layer=-2, image_seq_length=16,
                         tie_word_embeddings=True)
    model = LlavaForConditionalGeneration(config).eval()
    tower = model.model.vision_tower
    getattr(tower, "vision_model", tower).load_state_dict(clip.vision_model.state_dict())
    ip = BitImageProcessorPil(do_resize=True, size={"height": 56, "width": 56}, do_center_crop=False,
                              do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_convert_rgb=True)
    processor = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                               chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
    model.save_pretrained(out / "llava")
    processor.save_pretrained(out / "llava")
    return out / "llava", out / "clip"
