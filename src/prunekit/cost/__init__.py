"""Cost of a plan: analytic MACs/params (:mod:`prunekit.cost.macs`) and measured latency (:mod:`prunekit.cost.latency`)."""

from prunekit.cost.macs import Cost, CostModel, count_params, measure_macs

__all__ = ["Cost", "CostModel", "count_params", "measure_macs"]
