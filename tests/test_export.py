"""``qapruner quantize`` / ``deploy.export``: a real compressed-tensors checkpoint that stock transformers loads.

Tolerance of the round trip (docs/deploy.md): the logits of ``LlavaForConditionalGeneration.from_pretrained(DIR)``
match the in-memory fake-quantized model to ``ROUNDTRIP_ATOL`` = 1e-4 (absolute, float32, every position);
observed 0.0. The dequantized weights are bit-identical. For W8A8 the one known difference is the order of
rounding in the dynamic activation quantizer: compressed-tensors rounds ``x / s + zp`` in float32, qapruner
rounds ``x / s`` and adds ``z``, so about 1.5 in 10^6 activation values land one grid step apart
(``test_ct_dynamic_activation_grid_is_ours_up_to_rounding_order``). The W8A8 round trip is therefore compared
with that rounding order applied to the in-memory model too, so the test cannot flake on another machine.
"""

import argparse
import json
import shutil
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from transformers import LlavaForConditionalGeneration

from qapruner.commands import quantize as quantize_cmd
from qapruner.deploy.export import export_compressed
from qapruner.deploy.meta import read_meta
from qapruner.errors import QAPrunerError
from qapruner.eval.prepare import quantized_copy
from qapruner.models.registry import load_model
from qapruner.prune import PruneConfig
from qapruner.quant import ActQuantConfig, QuantConfig, QuantLinear
from qapruner.quant.quant_linear import ActQuantizer
from qapruner.tasks import load_task

ROUNDTRIP_ATOL = 1e-4


def cli(argv):
    """``qapruner ARGV`` as the entry point runs it: exit status; errors print one line to stderr."""
    from qapruner import cli as entry

    if quantize_cmd in entry.COMMANDS:
        return entry.main(argv)
    parser = argparse.ArgumentParser(prog="qapruner")
    quantize_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except QAPrunerError as exc:
        import sys

        print(f"qapruner: error: {exc}", file=sys.stderr)
        return 2


def inputs(adapter, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(8, len(adapter.tokenizer), (1, 10), generator=g)
    ids = torch.cat([text[:, :3], torch.full((1, adapter.n_visual), adapter.image_token_id), text[:, 3:]], dim=1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "pixel_values": torch.randn(1, 3, 56, 56, generator=g)}


CONFIGS = {
    "w4a16-rtn-g32": QuantConfig.from_preset("w4a16-g32"),
    "w4a16-rot-gptq-g32": replace(QuantConfig.from_preset("w4a16-rot-gptq-g32"), online_hadamard=False),
    "w8a8": QuantConfig.from_preset("w8a8"),
}


@pytest.fixture(scope="module")
def exports(tiny_llava_dir, tiny_jsonl, tmp_path_factory):
    """Each config quantized (calibrated on the JSONL task) and exported: {name: (quantized adapter, dir)}."""
    adapter = load_model(str(tiny_llava_dir), device=torch.device("cpu"))  # exact values: float32 on any machine
    task = load_task(f"jsonl:{tiny_jsonl}")
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name, cfg in CONFIGS.items():
        qadapter, info = quantized_copy(adapter, cfg, task, calib_samples=8, seed=0)
        export_compressed(qadapter.model, root / name, adapter.processor, source=str(tiny_llava_dir), calibration=info)
        out[name] = (qadapter, root / name)
    out["fp"] = (adapter, None)
    return out


def _ct_fake_quant(x, bits, sym):
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp

    args = QuantizationArgs(num_bits=bits, type="int", symmetric=sym, dynamic=True, strategy="token")
    return fake_quantize(x, *compute_dynamic_scales_and_zp(x, args, None), args)


@contextmanager
def ct_activation_rounding(model):
    """The in-memory model's dynamic activation quantizers with compressed-tensors' order of rounding."""
    acts = [m.act_quant for m in model.modules() if isinstance(m, QuantLinear) and m.act_quant.cfg.enabled]
    for a in acts:
        a.quantize = lambda x, c=a.cfg: _ct_fake_quant(x, c.bits, c.sym)
    try:
        yield
    finally:
        for a in acts:
            del a.quantize


def test_ct_dynamic_activation_grid_is_ours_up_to_rounding_order():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4096, 256, generator=g) * 3
    x[..., :8] += 20  # skewed tokens: zero points far from the middle
    ours, theirs = ActQuantizer(ActQuantConfig(bits=8))(x), _ct_fake_quant(x, 8, False)
    step = (x.amax(-1, keepdim=True).clamp(min=0) - x.amin(-1, keepdim=True).clamp(max=0)) / 255
    d = (ours - theirs).abs()
    off = d > 0
    assert off.float().mean() < 1e-5  # about 1.5e-6 measured
    assert torch.allclose(d[off], step.expand_as(d)[off], rtol=1e-3)  # each one grid step apart


@pytest.mark.parametrize("name", list(CONFIGS))
def test_roundtrip_logits_match_fake_quant(exports, name):
    qadapter, path = exports[name]
    loaded = LlavaForConditionalGeneration.from_pretrained(path).eval()
    assert loaded.config.quantization_config.quant_method == "compressed-tensors"
    with torch.no_grad(), ct_activation_rounding(qadapter.model):
        for seed in range(2):
            x = inputs(qadapter, seed)
            ref, got = qadapter.model(**x).logits, loaded(**x).logits
            assert (ref - got).abs().max().item() <= ROUNDTRIP_ATOL
            assert (ref - exports["fp"][0].model(**x).logits).abs().max().item() > 10 * ROUNDTRIP_ATOL  # quantized
    # the quantized linears really run quantized after loading (compressed-tensors scheme attached)
    q = loaded.model.language_model.layers[0].mlp.down_proj
    assert q.quantization_scheme.weights.num_bits == CONFIGS[name].weight.bits
    assert not hasattr(loaded.model.vision_tower.encoder.layer[0].mlp.fc1, "quantization_scheme")


def _tensors(path):
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _module_ints(qadapter):
    return {n.split("language_model.")[-1]: m for n, m in qadapter.model.named_modules() if isinstance(m, QuantLinear)}


@pytest.mark.parametrize("name", ["w4a16-rtn-g32", "w4a16-rot-gptq-g32"])
def test_int4_weights_are_packed_exact_integers(exports, name):
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    qadapter, path = exports[name]
    t = _tensors(path)
    mods = _module_ints(qadapter)
    packed = [k for k in t if k.endswith(".weight_packed")]
    assert len(packed) == len(mods) == 14  # 2 layers x 7 linears, nothing else quantized
    assert not any(k.endswith("_proj.weight") and "layers." in k and "vision" not in k for k in t)
    for k in packed:
        ql = mods[k.split("model.")[-1].rsplit(".", 1)[0].replace("language_model.", "")]
        w = t[k]
        assert w.dtype == torch.int32 and tuple(w.shape) == (ql.out_features, ql.in_features * 4 // 32)
        scale = t[k.replace("weight_packed", "weight_scale")]
        assert scale.dtype == torch.float32 and tuple(scale.shape) == (ql.out_features, ql.in_features // 32)
        assert t[k.replace("weight_packed", "weight_shape")].tolist() == [ql.out_features, ql.in_features]
        assert k.replace("weight_packed", "weight_zero_point") not in t  # symmetric
        ints = unpack_from_int32(w, 4, torch.Size([ql.out_features, ql.in_features])).to(torch.int32)
        assert ints.min() >= -8 and ints.max() <= 7
        assert torch.equal(ints, ql.integer_weight())
        assert torch.equal(ints.float() * scale.repeat_interleave(32, dim=1), ql.weight.detach())


def test_w8a8_weights_are_int8_with_dynamic_token_activations(exports):
    qadapter, path = exports["w8a8"]
    t = _tensors(path)
    mods = _module_ints(qadapter)
    ints = {k: v for k, v in t.items() if v.dtype == torch.int8}
    assert len(ints) == 14 and not any(k.endswith(("input_scale", "weight_packed")) for k in t)
    for k, w in ints.items():
        ql = mods[k.rsplit(".", 1)[0].split("model.")[-1]]
        assert tuple(w.shape) == (ql.out_features, ql.in_features)
        scale = t[k + "_scale"]
        assert scale.dtype == torch.float32 and tuple(scale.shape) == (ql.out_features, 1)
        assert torch.equal(w.to(torch.int32), ql.integer_weight())
    cfg = read_meta(path)
    assert cfg["quant"]["preset"] == "w8a8" and cfg["sizes"]["decoder_linears"] == 14
    groups = LlavaForConditionalGeneration.config_class.from_pretrained(path).quantization_config["config_groups"]
    acts = groups["group_0"]["input_activations"]
    assert acts["dynamic"] is True and acts["strategy"] == "token" and acts["num_bits"] == 8


@pytest.mark.parametrize("preset,what", [
    ("w4a4-rot-gptq", "online Hadamard"), ("w4a16-rot", "online Hadamard"), ("w8a8-static", "static activation"),
    ("w4a8", "W4A8"), ("w8a8-kv4", "KV-cache"), ("w3a16", "3-bit weights"), ("w4a16-asymw", "asymmetric weights"),
    ("w8a8-ag32", "per-group activation"), ("fp", "without weight quantization")])
def test_unsupported_preset_is_refused_before_loading(preset, what, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli(["quantize", "--model", str(tmp_path / "no-such-model"), "--quant", preset, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and what in err and "cannot be exported" in err
    assert len(err.splitlines()) == 1 and err.count(". ") == 0  # one sentence
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_existing_dir_needs_force_and_force_replaces_only_exports(tiny_llava_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["quantize", "--model", str(tiny_llava_dir), "--quant", "w4a16", "--out", str(out)]
    assert cli(argv) != 0
    assert "pass --force" in capsys.readouterr().err
    assert cli(argv + ["--force"]) != 0  # not an export: never deleted
    assert "not a qapruner export" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    export = tmp_path / "export"
    assert cli(["quantize", "--model", str(tiny_llava_dir), "--quant", "w4a16", "--out", str(export)]) == 0
    assert cli(["quantize", "--model", str(tiny_llava_dir), "--quant", "w8a8", "--out", str(export), "--force"]) == 0
    assert read_meta(export)["quant"]["preset"] == "w8a8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "out"]  # no temporary leftovers


def test_failure_leaves_nothing_half_written(tiny_llava_dir, tmp_path, monkeypatch, capsys):
    from qapruner.deploy import export as export_mod

    def boom(directory):
        assert (directory / "model.safetensors").is_file()  # fails after the weights were written
        raise QAPrunerError("Simulated failure.")

    argv = ["quantize", "--model", str(tiny_llava_dir), "--quant", "w4a16", "--out"]
    assert cli(argv + [str(tmp_path / "export")]) == 0
    before = sorted(p.name for p in (tmp_path / "export").iterdir())
    monkeypatch.setattr(export_mod, "decoder_weight_sizes", boom)
    assert cli(argv + [str(tmp_path / "new" / "deeper")]) != 0
    assert cli(argv + [str(tmp_path / "export"), "--force"]) != 0
    assert "Simulated failure" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no new dir, no parents, no temp dirs
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == before  # the earlier export is intact
    assert read_meta(tmp_path / "export")["quant"]["preset"] == "w4a16"


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_corrupt_checkpoint_is_one_sentence_and_writes_nothing(tiny_llava_dir, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(tiny_llava_dir, src)
    _truncate(src / "model.safetensors")
    out = tmp_path / "out"
    assert cli(["quantize", "--model", str(src), "--quant", "w4a16", "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert "Cannot load the weights" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_truncated_export_fails_to_load_with_one_sentence(exports, tmp_path):
    path = tmp_path / "broken"
    shutil.copytree(exports["w8a8"][1], path)
    _truncate(path / "model.safetensors")
    with pytest.raises(QAPrunerError, match="Cannot load the weights"):
        load_model(str(path))


def test_prune_config_round_trips_through_load_model(tiny_llava_dir, tmp_path):
    out = tmp_path / "pruned"
    assert cli(["quantize", "--model", str(tiny_llava_dir), "--quant", "w8a16", "--out", str(out),
                "--prune", "cdpruner", "--keep", "0.25", "--qa", "--alpha", "0.6", "--seed", "3"]) == 0
    adapter = load_model(str(out))
    assert adapter.prune_config == PruneConfig("cdpruner", keep=0.25, qa=True, alpha=0.6, seed=3)
    assert adapter.model._qapruner_quant.preset == "w8a16"
    with pytest.raises(QAPrunerError):  # an export is not quantized a second time
        quantized_copy(adapter, QuantConfig.from_preset("w8a8"), None)
    x = inputs(adapter)
    with torch.no_grad():  # load_model decompressed it: the adapter's parts run directly
        feats, cls_attn = adapter.encode(x["pixel_values"])
        out_ = adapter.forward(feats, cls_attn, ["what color is the shape?"], ["what color is the shape?"], None)
    assert torch.isfinite(out_.logits).all()
    assert load_model(str(tiny_llava_dir)).prune_config is None


def test_no_online_hadamard_needs_a_rotation(tmp_path, capsys):
    rc = cli(["quantize", "--quant", "w4a16", "--no-online-hadamard", "--out", str(tmp_path / "x")])
    assert rc != 0 and "rotated preset" in capsys.readouterr().err


def _vllm_scheme(group: dict, fmt: str) -> str | None:
    """Which compressed-tensors scheme vLLM picks for a config group, by the rules of its
    ``CompressedTensorsConfig._get_scheme_from_parts`` (read in vLLM's source, 2026; restated, not imported:
    vLLM does not install here). Weight-only int 4/8 bits, channel or group strategy, static, in the
    pack-quantized format -> WNA16 (Marlin / Machete kernels); int8 weights per channel or tensor, symmetric,
    static, with dynamic per-token int8 activations, in an activation format -> W8A8Int8."""
    w, a = group["weights"], group["input_activations"]
    if w["type"] != "int" or w["dynamic"]:
        return None
    if a is None and w["strategy"] in ("channel", "group") and fmt == "pack-quantized" and w["num_bits"] in (4, 8):
        return "WNA16"
    if (a is not None and fmt in ("int-quantized", "float-quantized", "naive-quantized") and a["type"] == "int"
            and w["num_bits"] == a["num_bits"] == 8 and w["strategy"] in ("channel", "tensor") and w["symmetric"]
            and a["strategy"] == "token" and a["dynamic"]):
        return "W8A8Int8"
    return None


@pytest.mark.parametrize("name,scheme", [("w4a16-rtn-g32", "WNA16"), ("w4a16-rot-gptq-g32", "WNA16"),
                                         ("w8a8", "W8A8Int8")])
def test_exported_config_is_one_vllm_serves(exports, name, scheme):
    """The written config selects the vLLM scheme the docs name, and vLLM skips every linear that is not a decoder
    linear (the vision tower, the projector, the LM head are listed in ``ignore``)."""
    _, path = exports[name]
    qcfg = LlavaForConditionalGeneration.config_class.from_pretrained(path).quantization_config
    assert qcfg["quant_method"] == "compressed-tensors" and qcfg["quantization_status"] == "compressed"
    (group,) = qcfg["config_groups"].values()
    assert _vllm_scheme(group, group.get("format") or qcfg["format"]) == scheme
    quantized = {n for n in _module_ints(exports[name][0])}
    linears = {n for n, m in exports["fp"][0].model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert group["targets"] == ["Linear"]
    assert set(qcfg["ignore"]) == {n for n in linears if n.split("language_model.")[-1] not in quantized}
    assert "lm_head" in qcfg["ignore"] and not any("layers." in n and "language_model" in n for n in qcfg["ignore"])


def test_cli_eval_real_on_an_export_runs_int8_kernels_and_names_the_checkpoint_preset(exports, tiny_jsonl, tmp_path):
    from qapruner.cli import main

    _, path = exports["w8a8"]
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(path), "--task", f"jsonl:{tiny_jsonl}", "--real", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["quant"] is None and summary["checkpoint_quant"] == "w8a8"
    assert summary["quant_info"]["kernels"] == {"int8-dynamic": 14}
