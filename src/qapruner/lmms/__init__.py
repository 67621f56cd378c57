"""qapruner as an lmms-eval model and task set (plugin, not a fork): ``python -m lmms_eval --model qapruner
--model_args model=testbed,quant=w4a4,prune=cdpruner,keep=0.25,qa=true --include_path TASKS_DIR --tasks
qapruner_easy_vqa``. See docs/lmms_eval.md.

* ``models/qapruner.py``: the lmms-eval model class (imports lmms-eval);
* ``engine.py``: the qapruner side (model preparation, features, scoring and generation), no lmms-eval;
* ``options.py``: ``--model_args`` → qapruner's ``EvalConfig``;
* ``docs.py`` + ``tasks/*.yaml``: qapruner's tasks as offline lmms-eval tasks.
"""

from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
MODEL_CLASS = "qapruner.lmms.models.qapruner.QAPruner"


def manifests():
    """lmms-eval's ``lmms_eval.models`` entry-point payload: ``--model qapruner`` → :data:`MODEL_CLASS`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id="qapruner", simple_class_path=MODEL_CLASS)]
