"""Host pruners, one per file; ``make_host(name, config)`` builds one."""

from __future__ import annotations

from qapruner.errors import QAPrunerError
from qapruner.prune.hosts.base import Host
from qapruner.prune.hosts.cdpruner import CDPrunerHost
from qapruner.prune.hosts.cls_attention import ClsAttentionHost
from qapruner.prune.hosts.divprune import DivPruneHost
from qapruner.prune.hosts.fastv import FastVHost
from qapruner.prune.hosts.random import RandomHost
from qapruner.prune.hosts.uniform import UniformHost

HOSTS = {
    "random": RandomHost,
    "uniform": UniformHost,
    "cls": ClsAttentionHost,
    "fastv": FastVHost,
    "divprune": DivPruneHost,
    "cdpruner": CDPrunerHost,
}


def make_host(name: str, seed: int = 0) -> Host:
    if name not in HOSTS:
        raise QAPrunerError(f"Unknown pruning host {name!r}; choose one of {', '.join(HOSTS)}.")
    return RandomHost(seed) if name == "random" else HOSTS[name]()


__all__ = ["HOSTS", "Host", "make_host"]
