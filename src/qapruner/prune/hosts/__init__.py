"""Host pruners, one per file, each registered by ``@register_host(NAME)``; the import order below is the
order in which hosts are listed and swept."""

from __future__ import annotations

from qapruner.errors import QAPrunerError
from qapruner.prune.hosts import random, uniform, cls_attention, fastv, divprune, cdpruner  # noqa: F401  (registers)
from qapruner.prune.hosts.base import HOSTS, Host, register_host


def make_host(name: str, seed: int = 0) -> Host:
    if name not in HOSTS:
        raise QAPrunerError(f"Unknown pruning host {name!r}; choose one of {', '.join(HOSTS)}.")
    return HOSTS[name](seed=seed)


__all__ = ["HOSTS", "Host", "make_host", "register_host"]
