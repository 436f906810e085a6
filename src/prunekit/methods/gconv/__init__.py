"""``gconv``: pruning dense convs into group convolutions (Zhao & Luk, ICCV'19 NEUARCH workshop, arXiv 1811.09341).

Zhao & Luk, "Efficient Structured Pruning and Architecture Searching for Group Convolution" (seed
``kumasento/gconv-prune``, package ``gumi``): a dense conv with ``F`` filters and ``C`` input channels becomes a
``G``-group conv by keeping ``G`` diagonal blocks of ``F/G x C/G`` kernels under a permutation of its output and of
its input channels; the channel counts never change, so nothing else in the network is coupled to the choice.

The method (:mod:`~prunekit.methods.gconv.prune`: ``Config``, ``run``) and its parts:

* :mod:`~prunekit.methods.gconv.criterion`: the criterion matrix ``S [F, C]`` of a conv (kernel L2 norms, or the
  first-order Taylor term ``|W * dL/dW|``), normalised by its Frobenius norm.
* :mod:`~prunekit.methods.gconv.permutation`: the permutation heuristics (``same``, ``sort``, ``grps``, each followed
  by the Hungarian matching of column blocks to row blocks) returning a
  :class:`~prunekit.space.plan.LayerChoice`'s ``perm_out`` / ``perm_in``, the block-diagonal mask and the kept mass.
* :mod:`~prunekit.methods.gconv.groups`: the legal group counts per layer and the uniform / ``mcpg`` / table choices
  (the seed's JSON group configs import).
* :mod:`~prunekit.methods.gconv.search`: the ``MAX_COST`` local search under a budget.
"""

from prunekit.methods.gconv.prune import BUDGET_METRICS, Config, GConvConfig, run

__all__ = ["BUDGET_METRICS", "Config", "GConvConfig", "run"]
