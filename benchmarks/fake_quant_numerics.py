"""How much a fake-quant model's logits depend on the arithmetic: the fp32 GEMM (the simulation's default) and
the integer GEMM (``--gemm integer``), each against the same quantized model run in float64, on the first N items
of a task's seeded subset (last-position logits over the whole vocabulary).

    python benchmarks/fake_quant_numerics.py w4a4-rot-gptq fashion-mnist 64
    python benchmarks/fake_quant_numerics.py fp fashion-mnist 32      # no quantization: the paths agree

Results of these runs: benchmarks/results/fake_quant_numerics.txt.
"""
import copy, sys, torch
from qapruner.eval.prepare import quantized_copy
from qapruner.models.registry import load_model
from qapruner.quant import QuantConfig
from qapruner.quant.integer_gemm import use_integer_gemm
from qapruner.tasks import load_task
from qapruner.models.features import FeatureCache
torch.set_num_threads(2)
preset, tname, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
fp = load_model("testbed"); task = load_task(tname)
q = fp if preset == "fp" else quantized_copy(fp, QuantConfig.from_preset(preset), task)[0]
items = task.subset(n, 0).items
def logits(adapter, dtype):
    out = []
    for i in range(0, n, 16):
        b = items[i:i + 16]
        feats, _ = FeatureCache(q, task).get([it.image for it in b])
        with torch.no_grad():
            vis = adapter.project(feats.to(dtype))
            out.append(adapter.last_logits(adapter.assemble([it.prompt for it in b], vis)).double())
    return torch.cat(out)
a = logits(q, torch.float32)
use_integer_gemm(q.model); b = logits(q, torch.float32); use_integer_gemm(q.model, on=False)
q64 = q.with_model(copy.deepcopy(q.model).double())
c = logits(q64, torch.float64)
for name, x in (("fp32 float GEMM", a), ("integer GEMM", b)):
    print(f"{name:16s} vs float64: max |dlogit| {float((x - c).abs().max()):.3f}, median per item "
          f"{float((x - c).abs().amax(-1).median()):.3f}, argmax agrees {int((x.argmax(-1) == c.argmax(-1)).sum())}/{n}")
print(f"fp32 vs integer: argmax agrees {int((a.argmax(-1) == b.argmax(-1)).sum())}/{n}")
