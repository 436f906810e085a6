"""Search utilities shared by budgeted pruning methods (bisection of a monotone cost to a MACs target, ...)."""

from prunekit.search.bisect import BisectResult, bisect_monotone

__all__ = ["BisectResult", "bisect_monotone"]
