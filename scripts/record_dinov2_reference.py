"""Record the reference output used by tests/test_vision.py, from the ONNX graph run by onnxruntime.

Run once (needs `pip install onnxruntime`, which qapruner itself does not need):
    python scripts/record_dinov2_reference.py
"""

import json

import numpy as np
import onnx
import onnxruntime as ort

from qapruner.paths import DINOV2_ONNX, package_file

LAST_BLOCK = "/backbone/encoder/layer.11/Add_1_output_0"  # hidden state after the last block, before layernorm


def reference_image() -> np.ndarray:
    """A deterministic, RNG-free 224 px input (smooth ramps plus a bright square)."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, 224), np.linspace(-1, 1, 224), indexing="ij")
    img = np.stack([xx, yy, xx * yy], 0).astype(np.float32) * 2.0
    img[:, 80:140, 60:120] = 2.5
    return img[None]


def main() -> None:
    graph = onnx.load(str(package_file(*DINOV2_ONNX)))
    graph.graph.output.append(onnx.helper.make_tensor_value_info(LAST_BLOCK, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString())
    hidden = session.run([LAST_BLOCK], {"input_image": reference_image()})[0][0]  # (257, 384)
    out = {
        "source": f"onnxruntime {ort.__version__} on {LAST_BLOCK}",
        "token_norms": np.linalg.norm(hidden, axis=-1).round(5).tolist(),
        "slice_tokens_0_4_channels_0_8": hidden[:4, :8].round(6).tolist(),
    }
    with open("tests/data/dinov2_reference.json", "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
