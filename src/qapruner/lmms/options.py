"""``--model_args`` of ``--model qapruner``: parsed into qapruner's own :class:`EvalConfig` (so every value is
checked by the same rules, with the same one-sentence errors, as ``qapruner eval``) plus the plugin's few
settings of its own. Nothing here imports lmms-eval."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import QAPrunerError
from ..eval.config import EvalConfig
from ..prune import PruneConfig

# key -> what it means (the docs and the "unknown key" error list them)
KEYS = {
    "model": "testbed (default), testbed:v1, testbed:FILE, or a local llava-hf directory",
    "quant": "quantization preset, e.g. w4a4, w4a4-rot-gptq (default: FP)",
    "prune": "pruning host: random | uniform | cls | fastv | divprune | cdpruner (default: none)",
    "keep": "share of visual tokens kept, in (0, 1] (needs prune=)",
    "qa": "true: the quantization-aware variant of the host (QAPruner)",
    "alpha": "weight of the host score in [0, 1], or dynamic (default 0.7)",
    "sensitivity": "S^Q of the QA variant: paper | matched | norm (default paper)",
    "layer_k": "LLM layer of in-LLM (fastv) pruning (default 2)",
    "seed": "seed of the random host and of the calibration sample (default 0)",
    "calib": "qapruner task that calibrates GPTQ / static presets (default: the evaluated qapruner task)",
    "calib_samples": "calibration items (default 32)",
    "calib_seed": "seed of the calibration sample alone (default: seed)",
    "dtype": "float32 (default) | bfloat16 (FP and weight-only presets)",
    "real": "true: real int4 / int8 kernels instead of fake-quant (FP, weight-only, W8A8 presets)",
    "max_new_tokens": "generation length when a task does not set one (default 10, as qapruner eval)",
    "feature_cache": "true (default): qapruner tasks' images use qapruner's vision-feature cache",
    "batch_size": "requests per forward pass (default: lmms-eval's --batch_size)",
}
# passed by lmms-eval itself; device placement is qapruner's (CUDA when available, else CPU)
LMMS_KEYS = ("device", "max_batch_size")


@dataclass(frozen=True)
class Options:
    config: EvalConfig  # model, quant, prune, dtype, real, seed, calib_samples, max_new_tokens, batch_size
    calib: str | None  # qapruner task name for calibration; None = from the evaluated documents
    feature_cache: bool


def _flag(key: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise QAPrunerError(f"model_args {key}={value!r} must be true or false.")


def _int(key: str, value) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    least = 0 if key in ("seed", "calib_seed") else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        what = "a non-negative integer" if key == "seed" else "a positive integer"
        raise QAPrunerError(f"model_args {key}={value!r} must be {what}.")
    return value


def _batch_size(value) -> int:
    """lmms-eval's --batch_size is a string: N, or auto / auto:N (no memory probing here: 16, as qapruner)."""
    if value is None:
        return 16
    if isinstance(value, str) and value.startswith("auto"):
        return 16
    return _int("batch_size", value)


def _keep(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise QAPrunerError(f"model_args keep={value!r} must be a number in (0, 1].") from None
    return float(value)


def parse_options(args: dict) -> Options:
    """Validate ``args`` (lmms-eval's parsed ``--model_args`` plus its batch_size / device / max_batch_size)."""
    args = dict(args)
    unknown = sorted(k for k in args if k not in KEYS and k not in LMMS_KEYS)
    if unknown:
        raise QAPrunerError(f"Unknown model_args key(s) {', '.join(unknown)} for --model qapruner; "
                            f"the keys are: {', '.join(KEYS)}.")
    for k in LMMS_KEYS:
        args.pop(k, None)
    model = str(args.get("model", "testbed"))
    quant = args.get("quant")
    quant = None if quant in (None, "", "fp", "none") else str(quant)
    seed = _int("seed", args.get("seed", 0))
    host = args.get("prune")
    qa = _flag("qa", args.get("qa", False))
    if host in (None, "", "none"):
        if "keep" in args or qa:
            raise QAPrunerError("model_args keep= and qa= need a pruning host: add prune=HOST.")
        prune = None
    else:
        if "keep" not in args:
            raise QAPrunerError("model_args prune= needs keep=RATIO (the share of visual tokens kept, in (0, 1]).")
        alpha = args.get("alpha", 0.7)
        prune = PruneConfig(host=str(host), keep=_keep(args["keep"]), qa=qa,
                            alpha=alpha if isinstance(alpha, str) else float(alpha),
                            sensitivity=str(args.get("sensitivity", "paper")),
                            layer_k=_int("layer_k", args.get("layer_k", 2)), seed=seed)
    mode = "generate" if prune is None or prune.host != "fastv" else "choice"  # fastv: likelihood requests only
    config = EvalConfig(model=model, task="lmms-eval", seed=seed, quant=quant,
                        calib_samples=_int("calib_samples", args.get("calib_samples", 32)), prune=prune, mode=mode,
                        calib_seed=_int("calib_seed", args["calib_seed"]) if "calib_seed" in args else None,
                        max_new_tokens=_int("max_new_tokens", args.get("max_new_tokens", 10)),
                        dtype=str(args.get("dtype", "float32")), real=_flag("real", args.get("real", False)),
                        batch_size=_batch_size(args.get("batch_size")))
    calib = args.get("calib")
    if calib is not None:
        from ..tasks import task_info

        task_info(str(calib))  # unknown task: one sentence now, not after the model has loaded
    return Options(config, None if calib is None else str(calib), _flag("feature_cache", args.get("feature_cache", True)))
