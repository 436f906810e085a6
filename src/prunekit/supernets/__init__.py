"""Supernets: networks that stand for many pruned networks at once, each used by the method named beside it.

* :mod:`prunekit.supernets.pruningnet` — MetaPruning's PruningNet (Liu et al., ICCV 2019): weights generated for any
  width encoding (method ``metapruning``).
* :mod:`prunekit.supernets.gates` — channel gates on random weights (Wang et al., "Pruning from Scratch", AAAI 2020;
  method ``scratch``).

They sit below the methods and above ``train`` / ``space``: a supernet never imports a method.
"""
