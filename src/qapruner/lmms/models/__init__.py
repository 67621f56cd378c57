"""lmms-eval's model lookup for ``--model qapruner``: the ``lmms_eval.models`` entry point
(``qapruner.lmms:manifests``) or the ``LMMS_EVAL_PLUGINS=qapruner.lmms`` variable, which reads this table and
imports ``qapruner.lmms.models.<name>.<class>``."""

AVAILABLE_MODELS = {"qapruner": "QAPruner"}
