"""Atomic file output, safe checkpoint loading and weights files (safetensors, state_dicts).

Every file prunekit writes goes through :func:`atomic_path`, so a killed process never leaves a half-written
report, checkpoint or ONNX file behind: data is written to a temporary file in the same directory and renamed
over the target only once complete (``os.replace`` is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from prunekit.errors import PrunekitError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``, on error delete it.

    Usage::

        with atomic_path("out/model.onnx") as tmp:
            torch.onnx.export(..., tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the file the user's usual permissions
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON to ``path``."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically ``torch.save`` a checkpoint dict (tensors, numbers, strings, lists, dicts only)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises:
        PrunekitError: the file is missing, truncated/corrupt, or holds pickled objects (not plain tensors/data).
    """
    path = Path(path)
    if not path.is_file():
        raise PrunekitError(f"checkpoint not found: {path} (check the path, or drop --resume to start fresh)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / unsafe files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PrunekitError(
            f"cannot load checkpoint {path}: {first[:200]} (the file is corrupt or not a prunekit checkpoint; "
            "delete it or point to another one)"
        ) from None
    if not isinstance(state, dict):
        raise PrunekitError(f"checkpoint {path} does not hold a dict (not a prunekit checkpoint)")
    return state


def save_safetensors(
    state_dict: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Atomically write ``state_dict`` (tensors, copied to contiguous CPU storage) as a ``.safetensors`` file, with
    optional string ``metadata``; no pickles."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the string metadata of a ``.safetensors`` file (no pickles).

    Raises:
        PrunekitError: the file is missing or corrupt.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise PrunekitError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as exc:
        raise PrunekitError(f"cannot read {path}: {str(exc)[:160]} (corrupt safetensors file?)") from None
    return state, meta


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Load weights from a prunekit ``baseline.pt``, a plain state_dict checkpoint or a ``.safetensors`` file.

    Raises:
        PrunekitError: missing / corrupt file, or one that holds no tensors.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path)[0]
    state = load_checkpoint(path)
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PrunekitError(
            f"{path} holds no state_dict of tensors (expected baseline.pt or torch.save(state_dict))"
        )
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state, strict=True)``; a mismatch raises PrunekitError naming ``source``."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise PrunekitError(f"weights in {source} do not fit the model: {first[:200]}") from None
