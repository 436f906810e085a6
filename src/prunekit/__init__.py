"""prunekit: structured pruning of CNNs through one pipeline.

model -> ChannelSpace -> Plan -> cost(plan) -> method chooses a Plan -> train/recover -> export -> report
"""

from prunekit.errors import PrunekitError

__version__ = "0.1.0"
__all__ = ["PrunekitError", "__version__"]
