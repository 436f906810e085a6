"""Reading what ``prunekit run`` / ``prunekit train`` wrote: a baseline checkpoint, a finished run directory.

Both rebuild models from their spec and a plan (no pickled modules) and load weights with ``weights_only=True`` or
from safetensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn
import yaml

from prunekit.config import RunConfig, parse_config
from prunekit.errors import PrunekitError
from prunekit.io import load_checkpoint, load_state, load_weights
from prunekit.models import create_model
from prunekit.space import MaskSet, Plan, density_masks, rebuild

BASELINE_FORMAT = "prunekit-baseline-v1"
"""``format`` key of a prunekit ``baseline.pt``."""

__all__ = ["BASELINE_FORMAT", "load_baseline", "load_run"]


def load_baseline(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the unpruned model saved in a prunekit ``baseline.pt`` (loaded with ``weights_only=True``).

    Returns:
        ``(model, checkpoint)``: the model built from the checkpoint's spec with its weights, in eval mode, and the
        checkpoint dict (``spec``, ``input_shape``, ``data`` (a ``DataConfig`` JSON), ...).

    Raises:
        PrunekitError: missing / corrupt file, or not a prunekit baseline checkpoint.
    """
    ck = load_checkpoint(path)
    if ck.get("format") != BASELINE_FORMAT:
        raise PrunekitError(f"{path} is not a prunekit baseline.pt (give a run directory or a baseline.pt)")
    model = create_model(ck["spec"])
    load_weights(model, load_state(path), str(path))
    return model.eval(), ck


def load_run(run_dir: str | Path) -> tuple[nn.Module, Plan, RunConfig]:
    """Rebuild a finished run's pruned model from ``plan.json`` + ``model.safetensors`` (no pickled modules).

    Raises:
        PrunekitError: not a run directory, or files missing / corrupt.
    """
    run_dir = Path(run_dir)
    for name in ("plan.json", "model.safetensors", "config.yaml"):
        if not (run_dir / name).is_file():
            raise PrunekitError(f"{run_dir} is not a finished prunekit run ({name} missing)")
    plan = Plan.load(run_dir / "plan.json")
    model = rebuild(plan, load_state(run_dir / "model.safetensors"))
    cfg = parse_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    return model, plan, cfg


def load_masks(run_dir: str | Path) -> MaskSet:
    """The weight masks of a finished run's sparse layers (``masks.safetensors``; empty for a dense plan).

    Without the file (a run written before it existed) the masks are recovered from the zeros of the saved
    weights (:func:`~prunekit.space.realise.density_masks` with ``from_zeros``).

    Raises:
        PrunekitError: not a run directory, or files missing / corrupt.
    """
    run_dir = Path(run_dir)
    path = run_dir / "masks.safetensors"
    if path.is_file():
        masks = MaskSet()
        masks.params = {k: v.bool() for k, v in load_state(path).items()}
        return masks
    model, plan, _ = load_run(run_dir)
    return density_masks(model, plan, from_zeros=True)
