"""Perplexity table of SmolLM2-135M-Instruct under quantization presets (loads the model once).

    python benchmarks/perplexity_table.py --presets fp w4a16 w8a8 ... --out benchmarks/results/ppl.jsonl

Same protocol as ``qapruner perplexity``: first 1024 tokens of /usr/share/common-licenses/GPL-3, calibration
(GPTQ / static / smooth) on the first 8192 tokens of six other license texts (Apache-2.0, MPL-2.0, GFDL-1.3,
Artistic, CC0-1.0, MPL-1.1; ``quant.calibration.DEFAULT_CALIB_FILES``) in sequences of 512.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from qapruner.models.smollm import load_smollm2
from qapruner.quant import QuantConfig, quantize_
from qapruner.quant.calibration import default_calibration_text, text_calibration
from qapruner.quant.perplexity import perplexity


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", required=True)
    ap.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--calib-text", default=None, help="default: the six license texts, concatenated")
    ap.add_argument("--calib-tokens", type=int, default=8192)
    ap.add_argument("--calib-seq", type=int, default=512)
    ap.add_argument("--out", default="benchmarks/results/perplexity.jsonl")
    args = ap.parse_args()
    torch.manual_seed(0)
    base, tok = load_smollm2()
    text = Path(args.text).read_text()
    calib_text = Path(args.calib_text).read_text() if args.calib_text else default_calibration_text()
    calib = text_calibration(tok, calib_text, args.calib_tokens, args.calib_seq)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for preset in args.presets:
        cfg = QuantConfig.from_preset(preset)
        model = copy.deepcopy(base)
        t0 = time.perf_counter()
        quantize_(model, cfg, calib=calib if cfg.needs_calibration else None)
        tq = time.perf_counter() - t0
        ppl = perplexity(model, tok, text, args.tokens)
        row = {"quant": cfg.preset, "perplexity": round(ppl, 3), "tokens": args.tokens,
               "quantize_seconds": round(tq, 1), "calib_tokens": sum(kw["input_ids"].numel() for kw in calib) if cfg.needs_calibration else 0}
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        del model


if __name__ == "__main__":
    main()
