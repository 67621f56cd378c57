import pytest

from qapruner.errors import QAPrunerError
from qapruner.quant import ActQuantConfig, QuantConfig, WeightQuantConfig


def test_preset_fields():
    c = QuantConfig.from_preset("w4a4-rot-gptq")
    assert (c.weight.bits, c.act.bits, c.method, c.rotation) == (4, 4, "gptq", "hadamard")
    assert c.weight.sym and c.weight.group_size is None and not c.weight.clip_search
    assert c.act.granularity == "token" and not c.act.sym
    c = QuantConfig.from_preset("W4A8-rrot-g64-ag32-kv4-noclip-aclip0.9-asymw-syma")
    assert c.rotation == "random" and c.weight.group_size == 64 and c.kv_bits == 4
    assert c.act.granularity == "group" and c.act.group_size == 32
    assert not c.weight.clip_search and c.act.clip_ratio == 0.9 and not c.weight.sym and c.act.sym


def test_static_and_group_conflict():
    with pytest.raises(QAPrunerError):
        QuantConfig.from_preset("w4a8-static-ag32")


@pytest.mark.parametrize("preset", [
    "w4a16", "w8a8", "w4a8", "w4a4", "w16a4", "w2a16", "w3a6", "w16a16", "w4a4-rot-gptq", "w4a4-rrot-gptq-g64",
    "w8a8-smooth", "w8a8-smooth0.8-static", "w4a4-rot-ag64-kv4", "w4a16-g128-clip-asymw", "w4a8-aclip0.9-syma", "w4a4-asymw-syma",
])
def test_round_trip(preset):
    c = QuantConfig.from_preset(preset)
    assert QuantConfig.from_preset(c.preset) == c
    assert c.preset == preset


def test_canonical_order_and_defaults():
    assert QuantConfig.from_preset("w4a4-gptq-rot-tok-noclip").preset == "w4a4-rot-gptq"
    assert QuantConfig.from_preset("fp").preset == "w16a16"


@pytest.mark.parametrize("bad", [
    "", "w4", "a4w4", "w1a4", "w4a9", "w4a4-foo", "w4a4-rot-rrot", "w4a4-gptq-rtn", "w4a4-g0", "w4a4-ag0",
    "w8a8-smooth-rot", "w8a8-smooth2", "w4a4-kv3x", "w4a4-kv1", "w4a4-aclip1.5", "w4a4-rot-rot", "w4a4-syma-asyma", "w4a4-wasym",
])
def test_bad_presets(bad):
    with pytest.raises(QAPrunerError):
        QuantConfig.from_preset(bad)


def test_dataclass_validation():
    with pytest.raises(QAPrunerError):
        WeightQuantConfig(bits=1)
    with pytest.raises(QAPrunerError):
        ActQuantConfig(granularity="channel")
    with pytest.raises(QAPrunerError):
        QuantConfig(method="awq")


def test_needs_calibration():
    assert not QuantConfig.from_preset("w4a4-rot").needs_calibration
    assert QuantConfig.from_preset("w4a4-rot-gptq").needs_calibration
    assert QuantConfig.from_preset("w8a8-static").needs_calibration
    assert QuantConfig.from_preset("w8a8-smooth").needs_calibration
    assert not QuantConfig.from_preset("w16a8-gptq").needs_calibration  # GPTQ with no weight quantization
