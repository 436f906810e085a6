"""CIFAR-10 / CIFAR-100 from the official "python version" pickle batches.

Layouts (as extracted from ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``)::

    cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    cifar-100-python/{train, test, meta}

Each batch is a pickled dict with ``b"data"`` (uint8 ``[N, 3072]``, channel-major 3x32x32) and ``b"labels"``
(CIFAR-10) or ``b"fine_labels"`` (CIFAR-100). Only these known file names are unpickled, and with a restricted
unpickler that can build nothing but numpy arrays, so a planted file cannot run code.
"""

from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunekit.errors import PrunekitError

_LAYOUT = {
    "cifar10": {
        "subdir": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "label_key": b"labels",
        "num_classes": 10,
        "meta": ("batches.meta", b"label_names"),
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    },
    "cifar100": {
        "subdir": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "label_key": b"fine_labels",
        "num_classes": 100,
        "meta": ("meta", b"fine_label_names"),
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    },
}

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# (module, name) pairs a CIFAR pickle may reference; anything else is refused.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("_codecs", "encode"): ("_codecs", "encode"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        try:
            return super().find_class(*target)
        except (ImportError, AttributeError):  # numpy < 2 has no numpy._core
            return super().find_class(module.replace("numpy._core", "numpy.core"), name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise PrunekitError(f"cannot read CIFAR batch {path}: {e.strerror or e}") from None
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... on corrupt files
        raise PrunekitError(
            f"corrupt CIFAR batch {path}: {type(e).__name__}: {e} (re-extract the archive)"
        ) from None
    if not isinstance(obj, dict):
        raise PrunekitError(f"corrupt CIFAR batch {path}: expected a dict, got {type(obj).__name__}")
    return obj


def _has_layout(d: Path, name: str) -> bool:
    lay = _LAYOUT[name]
    return all((d / f).is_file() for f in lay["train"] + lay["test"])


def candidate_dirs(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    """Directories searched for ``name``: each of data_dir, $PRUNEKIT_DATA, $PRUNEKIT_DATA/<name> itself
    and its standard archive subfolder (``cifar-10-batches-py`` / ``cifar-100-python``)."""
    bases: list[Path] = []
    if data_dir is not None:
        bases.append(Path(data_dir).expanduser())
    env = os.environ.get("PRUNEKIT_DATA")
    if env:
        bases += [Path(env).expanduser(), Path(env).expanduser() / name]
    out: list[Path] = []
    for b in bases:
        for d in (b, b / _LAYOUT[name]["subdir"]):
            if d not in out:
                out.append(d)
    return out


def find_cifar_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The directory holding the batch files of ``name`` (``cifar10`` or ``cifar100``).

    ``data_dir`` may be the batch directory itself or its parent.

    Raises:
        PrunekitError: not found; the one-line message lists the places looked and where to download it.
    """
    if name not in _LAYOUT:
        raise PrunekitError(f"unknown CIFAR dataset {name!r}: choose cifar10 or cifar100")
    dirs = candidate_dirs(name, data_dir)
    for d in dirs:
        if _has_layout(d, name):
            return d
    lay = _LAYOUT[name]
    looked = ", ".join(str(d) for d in dirs) or "nowhere (no --data-dir given and $PRUNEKIT_DATA unset)"
    raise PrunekitError(
        f"{name} not found: looked for {lay['subdir']}/{{{','.join(lay['train'] + lay['test'])}}} "
        f"in {looked}; "
        f"download {lay['url']}, extract it and pass --data-dir (the folder holding {lay['subdir']})"
    )


def _read_batches(
    d: Path, files: list[str], label_key: bytes, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for f in files:
        obj = _unpickle(d / f)
        data, labels = obj.get(b"data"), obj.get(label_key)
        if data is None or labels is None:
            raise PrunekitError(
                f"corrupt CIFAR batch {d / f}: missing key b'data' or {label_key!r} (wrong dataset or file?)"
            )
        data = np.asarray(data)
        labels = np.asarray(labels, dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise PrunekitError(
                f"corrupt CIFAR batch {d / f}: data {data.dtype} {data.shape}, {len(labels)} labels "
                "(expected uint8 [N, 3072] and N labels)"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise PrunekitError(f"corrupt CIFAR batch {d / f}: labels outside 0..{num_classes - 1}")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


@functools.lru_cache(maxsize=4)
def _load_cached(
    name: str, d: str, _stamp: tuple
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    lay = _LAYOUT[name]
    out = []
    for split in ("train", "test"):
        x, y = _read_batches(
            Path(d), lay["train"] if split == "train" else lay["test"], lay["label_key"], lay["num_classes"]
        )
        out += [torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)]
    return out[0], out[1], out[2], out[3]


def load_cifar(
    name: str, data_dir: str | os.PathLike | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``, fine labels).

    Cached in-process; the returned tensors are shared with the cache, do not modify them in place.

    Returns:
        ``(train_x, train_y, test_x, test_y)``: images ``uint8 [N, 3, 32, 32]``, labels ``int64 [N]``.

    Raises:
        PrunekitError: directory not found, or a batch file is corrupt / has the wrong format.
    """
    d = find_cifar_dir(name, data_dir)
    lay = _LAYOUT[name]
    stamp = tuple((f, (d / f).stat().st_size, (d / f).stat().st_mtime_ns) for f in lay["train"] + lay["test"])
    return _load_cached(name, str(d.resolve()), stamp)


def cifar_class_names(name: str, data_dir: str | os.PathLike | None = None) -> list[str]:
    """Class names from the archive's meta file, or ``["0", "1", ...]`` if it is absent/unreadable."""
    lay = _LAYOUT[name]
    if name == "cifar10":
        return list(CIFAR10_CLASSES)
    try:
        d = find_cifar_dir(name, data_dir)
        meta_file, key = lay["meta"]
        names = _unpickle(d / meta_file)[key]
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    except (PrunekitError, KeyError, TypeError):
        return [str(i) for i in range(lay["num_classes"])]
