"""Vision-token pruning: host pruners and their quantization-aware (QAPruner) variants.

    from qapruner.prune import PruneConfig, PruneContext, Pruner
    idx = Pruner(PruneConfig(host="cdpruner", keep=0.125, qa=True)).select(ctx)   # (B, k), ascending

See docs/pruning.md.
"""

from qapruner.prune.config import HOSTS, PruneConfig, num_keep
from qapruner.prune.context import PruneContext
from qapruner.prune.pruner import Pruner

__all__ = ["HOSTS", "PruneConfig", "PruneContext", "Pruner", "num_keep"]
