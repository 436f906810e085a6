"""prunekit: structured pruning of CNNs through one pipeline.

model -> ChannelSpace -> Plan -> cost(plan) -> method chooses a Plan -> train/recover -> export -> report

From Python: :func:`prunekit.prune`, :func:`prunekit.save`, :func:`prunekit.restore` (:mod:`prunekit.api`).
"""

from typing import Any

from prunekit.errors import PrunekitError

__version__ = "0.1.0"
__all__ = ["PrunekitError", "__version__", "prune", "restore", "save"]


def __getattr__(name: str) -> Any:  # the API imports torch and the methods: only when it is used
    if name in ("prune", "save", "restore"):
        from prunekit import api

        return getattr(api, name)
    raise AttributeError(f"module 'prunekit' has no attribute {name!r}")
