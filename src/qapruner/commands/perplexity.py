"""``qapruner perplexity``: perplexity of the testbed's language model (SmolLM2-135M) under a quantization preset."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import QAPrunerError

DEFAULT_TEXT = "/usr/share/common-licenses/GPL-3"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "perplexity", help="perplexity of SmolLM2-135M on a text, optionally quantized",
        description="Perplexity of the testbed's language model (SmolLM2-135M-Instruct) on the first N tokens of "
                    "a text file, after quantizing it with a preset (see docs/quantization.md).")
    p.add_argument("--quant", default="fp", help="quantization preset, e.g. fp, w4a16, w8a8, w4a4-rot-gptq (default fp)")
    p.add_argument("--text", default=DEFAULT_TEXT, help=f"evaluation text file (default {DEFAULT_TEXT})")
    p.add_argument("--tokens", type=int, default=1024, help="evaluate the first N tokens (default 1024)")
    p.add_argument("--calib-text", default=None,
                   help="calibration text for GPTQ / static scales / SmoothQuant (default: six Debian license texts "
                        "other than the GPL family, concatenated)")
    p.add_argument("--calib-tokens", type=int, default=8192, help="calibration tokens (default 8192)")
    p.add_argument("--calib-seq", type=int, default=512, help="calibration sequence length (default 512)")
    p.add_argument("--out", default=None, help="write the result as JSON to this file")
    p.set_defaults(func=run)


def _read(path: str, what: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise QAPrunerError(f"The {what} file '{path}' does not exist.")
    text = p.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise QAPrunerError(f"The {what} file '{path}' is empty.")
    return text


def run(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..models.smollm import load_smollm2
    from ..quant import QuantConfig, quantize_
    from ..quant.calibration import DEFAULT_CALIB_FILES, default_calibration_text, text_calibration
    from ..quant.perplexity import perplexity

    console = Console(stderr=True)
    config = QuantConfig.from_preset(args.quant)
    text = _read(args.text, "evaluation text")
    if args.tokens < 2:
        raise QAPrunerError(f"--tokens must be at least 2, not {args.tokens}.")
    calib_path = args.calib_text or "+".join(DEFAULT_CALIB_FILES)
    if config.needs_calibration:
        if args.calib_tokens < 2 or args.calib_seq < 2:
            raise QAPrunerError("--calib-tokens and --calib-seq must be at least 2.")
        calib_text = _read(calib_path, "calibration text") if args.calib_text else default_calibration_text()
        if Path(calib_path).resolve() == Path(args.text).resolve():
            console.print("[yellow]warning: calibrating on the evaluation text; the perplexity is optimistic[/]")

    t0 = time.perf_counter()
    with console.status("loading SmolLM2-135M-Instruct ..."):
        model, tokenizer = load_smollm2()
    t_load = time.perf_counter() - t0

    calib = text_calibration(tokenizer, calib_text, args.calib_tokens, args.calib_seq) if config.needs_calibration else None
    t1 = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True) as prog:
        def progress(it, total, description):
            return prog.track(it, total=total, description=description)
        quantize_(model, config, calib=calib, progress=progress)
    t_quant = time.perf_counter() - t1
    t2 = time.perf_counter()
    with console.status(f"perplexity on {args.tokens} tokens ..."):
        ppl = perplexity(model, tokenizer, text, args.tokens)
    t_eval = time.perf_counter() - t2
    result = {
        "perplexity": ppl, "tokens": args.tokens, "quant": config.preset, "quant_input": args.quant,
        "text": str(args.text), "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized fp32)",
        "calib_text": calib_path if calib else None, "calib_tokens": (sum(kw["input_ids"].numel() for kw in calib)
                                                                     if calib else 0),
        "seconds": time.perf_counter() - t0, "seconds_load": t_load, "seconds_quantize": t_quant,
        "seconds_eval": t_eval,
    }
    print(f"perplexity {ppl:.3f}  quant={config.preset}  tokens={args.tokens}  quantize {t_quant:.1f}s  "
          f"total {result['seconds']:.1f}s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0
