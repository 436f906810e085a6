"""IDX reader and the MNIST / Fashion-MNIST datasets.

The IDX format (http://yann.lecun.com/exdb/mnist/) is a 4-byte magic ``00 00 <dtype> <ndim>``, ``ndim``
big-endian uint32 dimensions, then the raw big-endian data. Files may be gzip-compressed (``.gz``).
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from prunekit.errors import PrunekitError

# IDX dtype code -> big-endian numpy dtype
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# System locations (module-level so tests can monkeypatch them).
SYSTEM_DIRS: dict[str, str] = {
    "fashion_mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "/usr/share/datasets/mnist",
}

_HOW_TO_GET = {
    "fashion_mnist": "install it with `apt-get install dataset-fashion-mnist`, "
    "or put the four Fashion-MNIST IDX files in --data-dir",
    "mnist": "put the four MNIST IDX files (train-images-idx3-ubyte.gz, ...) in --data-dir",
}

_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _parse_idx(buf: bytes, name: str) -> np.ndarray:
    if len(buf) < 4:
        raise PrunekitError(f"corrupt IDX file {name}: only {len(buf)} bytes (re-download or reinstall it)")
    if buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_DTYPES or not 1 <= buf[3] <= 8:
        raise PrunekitError(
            f"not an IDX file: {name} (bad magic {buf[:4].hex()}; expected 0000<dtype><ndim>): "
            "re-download or reinstall it"
        )
    dtype, ndim = _IDX_DTYPES[buf[2]], buf[3]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise PrunekitError(f"corrupt IDX file {name}: truncated header (re-download or reinstall it)")
    shape = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(buf) - header != expected:
        raise PrunekitError(
            f"corrupt IDX file {name}: shape {shape} needs {expected} data bytes, found {len(buf) - header} "
            "(truncated or padded; re-download or reinstall it)"
        )
    arr = np.frombuffer(buf, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=False) if dtype.itemsize > 1 else arr


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read one IDX file (raw or gzip, detected from the content) into a tensor.

    Returns:
        A CPU tensor with the file's shape, e.g. ``uint8 [60000, 28, 28]`` for MNIST images and
        ``uint8 [60000]`` for labels (other IDX dtypes map to int8/int16/int32/float32/float64).

    Raises:
        PrunekitError: missing file, bad magic, truncated/padded data or a corrupt gzip stream.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PrunekitError(f"cannot read IDX file {path}: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise PrunekitError(f"corrupt gzip IDX file {path}: {e} (re-download or reinstall it)") from None
    arr = _parse_idx(raw, str(path))
    if not arr.flags.writeable:
        arr = arr.copy()  # frombuffer on bytes is read-only; torch needs a writable buffer
    return torch.from_numpy(arr)


def _find_file(directory: Path, stem: str) -> Path | None:
    # Accept the canonical names plus the common "train-images.idx3-ubyte" variant, gzipped or not.
    alt = stem.replace("-idx", ".idx")
    for name in (stem + ".gz", stem, alt + ".gz", alt):
        p = directory / name
        if p.is_file():
            return p
    return None


def candidate_dirs(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    """Directories searched for dataset ``name``, in order: data_dir (and data_dir/<name>), $PRUNEKIT_DATA
    (and $PRUNEKIT_DATA/<name>), then the system directory."""
    dirs: list[Path] = []
    aliases = [name, name.replace("_", "-")] if "_" in name else [name]
    for base in (data_dir, os.environ.get("PRUNEKIT_DATA") or None):
        if base is None:
            continue
        base = Path(base).expanduser()
        dirs.append(base)
        dirs.extend(base / a for a in aliases)
    if name in SYSTEM_DIRS:
        dirs.append(Path(SYSTEM_DIRS[name]))
    seen: list[Path] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


def find_idx_files(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, tuple[Path, Path]]:
    """Locate the four IDX files of ``name`` (``fashion_mnist`` or ``mnist``).

    Returns:
        ``{"train": (images, labels), "test": (images, labels)}`` paths, all from the first directory that
        holds all four.

    Raises:
        PrunekitError: no searched directory holds all four files; the one-line message lists every place
        looked and how to get the data.
    """
    if name not in SYSTEM_DIRS:
        raise PrunekitError(f"unknown IDX dataset {name!r}: choose one of {', '.join(SYSTEM_DIRS)}")
    dirs = candidate_dirs(name, data_dir)
    for d in dirs:
        if not d.is_dir():
            continue
        found = {split: (_find_file(d, im), _find_file(d, lb)) for split, (im, lb) in _SPLIT_FILES.items()}
        if all(p is not None for pair in found.values() for p in pair):
            return found  # type: ignore[return-value]
    looked = ", ".join(str(d) for d in dirs)
    raise PrunekitError(
        f"{name} not found: looked for train/t10k-{{images-idx3,labels-idx1}}-ubyte[.gz] in {looked}; "
        f"{_HOW_TO_GET[name]} (or set $PRUNEKIT_DATA)"
    )


@functools.lru_cache(maxsize=8)
def _load_split_cached(images: str, labels: str, _stamp: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    x = read_idx(images)
    y = read_idx(labels)
    if x.dtype != torch.uint8 or x.dim() != 3:
        raise PrunekitError(
            f"unexpected IDX images in {images}: want uint8 [N, H, W], got {x.dtype} {tuple(x.shape)}"
        )
    if y.dtype != torch.uint8 or y.dim() != 1:
        raise PrunekitError(
            f"unexpected IDX labels in {labels}: want uint8 [N], got {y.dtype} {tuple(y.shape)}"
        )
    if len(x) != len(y):
        raise PrunekitError(
            f"IDX files disagree: {len(x)} images in {images} but {len(y)} labels in {labels}"
        )
    if len(y) and int(y.max()) > 9:
        raise PrunekitError(f"IDX labels in {labels} exceed 9 (max {int(y.max())}): wrong or corrupt file")
    return x.unsqueeze(1), y.to(torch.int64)


def _stamp(*paths: Path) -> tuple:
    out = []
    for p in paths:
        st = p.stat()
        out.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
    return tuple(out)


def load_idx_dataset(
    name: str, data_dir: str | os.PathLike | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load MNIST or Fashion-MNIST (train 60k, test 10k).

    Decoded arrays are cached in-process (keyed by path, size and mtime), so repeated calls are free. The
    returned tensors are shared with the cache: do not modify them in place.

    Returns:
        ``(train_x, train_y, test_x, test_y)``: images ``uint8 [N, 1, 28, 28]``, labels ``int64 [N]`` in 0..9.

    Raises:
        PrunekitError: files not found (message lists where it looked) or corrupt.
    """
    files = find_idx_files(name, data_dir)
    out: list[torch.Tensor] = []
    for split in ("train", "test"):
        im, lb = files[split]
        out.extend(_load_split_cached(str(im), str(lb), _stamp(im, lb)))
    return out[0], out[1], out[2], out[3]
