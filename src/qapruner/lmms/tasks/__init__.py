"""lmms-eval task YAMLs for qapruner's own tasks (``--include_path`` this directory; see docs/lmms_eval.md).
A package, so ``LMMS_EVAL_PLUGINS=qapruner.lmms`` finds ``qapruner.lmms.tasks``."""
