"""Tests for prunekit.data: readers, splits, loaders, augmentation, config."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from prunekit.data import (
    BatchAugment,
    DataConfig,
    Normalize,
    TensorLoader,
    build_data,
    load_cifar,
    load_digits28,
    load_idx_dataset,
    read_idx,
    stratified_split,
    stratified_subset,
)
from prunekit.data import idx as idx_mod
from prunekit.data.imagefolder import eval_transform, random_resized_crop_box
from prunekit.data.transforms import random_crop, random_hflip
from prunekit.errors import PrunekitError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(autouse=True)
def _no_env_data(monkeypatch):
    monkeypatch.delenv("PRUNEKIT_DATA", raising=False)


# ----------------------------------------------------------------------------------------------- helpers


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    if arr.dtype == np.int32:
        arr = arr.astype(">i4")
    if arr.dtype == np.float32:
        arr = arr.astype(">f4")
    data = (
        bytes([0, 0, codes[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    )
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_mnist_dir(d: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    arrays = []
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        write_idx(d / f"{split}-images-idx3-ubyte.gz", x, gz=True)
        write_idx(d / f"{split}-labels-idx1-ubyte", y)  # mixed: raw labels, gz images
        arrays += [x, y]
    return tuple(arrays)


def labelled_loader(n: int = 103, **kw) -> TensorLoader:
    """A loader whose labels are the sample ids, so yielded labels identify samples."""
    images = (
        torch.arange(n, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4)
    )
    return TensorLoader(
        images.contiguous(), torch.arange(n), normalize=Normalize((0.0,), (1.0,)), **{"batch_size": 10, **kw}
    )


def seen_labels(loader) -> list[int]:
    return [int(v) for _, y in loader for v in y]


# --------------------------------------------------------------------------------------------------- IDX


@needs_fashion
def test_read_idx_real_fashion_mnist():
    t0 = time.process_time()
    x = read_idx(FASHION_DIR / "train-images-idx3-ubyte.gz")
    cpu = time.process_time() - t0
    y = read_idx(FASHION_DIR / "train-labels-idx1-ubyte.gz")
    ty = read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
    assert x.shape == (60000, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (60000,) and ty.shape == (10000,)
    assert int(y.min()) == 0 and int(y.max()) == 9
    assert y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert ty[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert torch.bincount(y.long()).tolist() == [6000] * 10
    assert cpu < 2.0, f"decoding 60k Fashion-MNIST images took {cpu:.2f}s CPU"


@needs_fashion
def test_load_idx_dataset_shapes_and_cache():
    tx, ty, vx, vy = load_idx_dataset("fashion_mnist")
    assert tx.shape == (60000, 1, 28, 28) and vx.shape == (10000, 1, 28, 28)
    assert ty.dtype == vy.dtype == torch.int64
    t0 = time.perf_counter()
    again = load_idx_dataset("fashion_mnist")
    assert time.perf_counter() - t0 < 0.1
    assert again[0] is tx  # served from the in-process cache


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_synthetic(tmp_path, gz):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    out = read_idx(write_idx(tmp_path / "x.idx", arr, gz=gz))
    assert out.dtype == torch.uint8 and np.array_equal(out.numpy(), arr)
    ints = np.array([-5, 70000, 3], dtype=np.int32)  # big-endian on disk
    assert read_idx(write_idx(tmp_path / "i.idx", ints)).tolist() == [-5, 70000, 3]


def test_read_idx_corrupt(tmp_path):
    good = write_idx(tmp_path / "good", np.zeros((4, 3, 3), np.uint8)).read_bytes()
    cases = {
        "magic": b"\x01\x02\x08\x03" + good[4:],
        "dtype": b"\x00\x00\x07\x03" + good[4:],
        "trunc": good[:-5],
        "pad": good + b"\x00",
        "header": good[:9],
        "tiny": b"\x00\x00",
        "badgz": b"\x1f\x8b\x08\x00garbage-not-deflate",
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(PrunekitError, match=name):  # message names the file
            read_idx(p)
    with pytest.raises(PrunekitError, match="cannot read"):
        read_idx(tmp_path / "nope")


def test_missing_idx_dataset_lists_places(tmp_path, monkeypatch):
    sysdir = tmp_path / "system" / "fashion-mnist"
    monkeypatch.setitem(idx_mod.SYSTEM_DIRS, "fashion_mnist", str(sysdir))
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path / "envdata"))
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(PrunekitError) as ei:
        load_idx_dataset("fashion_mnist", mine)
    msg = str(ei.value)
    assert "\n" not in msg
    for place in (mine, tmp_path / "envdata", tmp_path / "envdata" / "fashion_mnist", sysdir):
        assert str(place) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg
    with pytest.raises(PrunekitError, match="fashion_mnist not found"):
        build_data(DataConfig(name="fashion_mnist", data_dir=str(mine)))
    # three of four files is still "missing"
    write_mnist_dir(mine)
    (mine / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(PrunekitError, match="not found"):
        load_idx_dataset("fashion_mnist", mine)


def test_idx_lookup_env_subdir_and_mnist_pipeline(tmp_path, monkeypatch):
    monkeypatch.setitem(idx_mod.SYSTEM_DIRS, "mnist", str(tmp_path / "none"))
    x, y, tx, ty = write_mnist_dir(tmp_path / "env" / "mnist")
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path / "env"))
    a, b, c, d = load_idx_dataset("mnist")
    assert np.array_equal(a[:, 0].numpy(), x) and b.tolist() == y.tolist() and c.shape == (20, 1, 28, 28)
    bundle = build_data(DataConfig(name="mnist", val_fraction=0.2, batch_size=16))
    assert bundle.sizes == {"train": 48, "val": 12, "test": 20}
    assert bundle.config.resolved_hflip is False  # digits are not mirror-invariant
    xb, yb = next(iter(bundle.train))
    assert xb.shape == (16, 1, 28, 28) and xb.dtype == torch.float32 and yb.dtype == torch.int64


# ------------------------------------------------------------------------------------------------ splits


def test_stratified_split_properties():
    labels = np.repeat(np.arange(4), [100, 37, 13, 250])
    np.random.default_rng(0).shuffle(labels)
    keep, val = stratified_split(labels, 0.1, seed=3)
    assert len(np.intersect1d(keep, val)) == 0 and len(keep) + len(val) == len(labels)
    assert len(val) == round(0.1 * len(labels))
    for c, n in enumerate([100, 37, 13, 250]):
        assert abs((labels[val] == c).sum() - 0.1 * n) <= 1
    keep2, val2 = stratified_split(labels, 0.1, seed=3)
    assert np.array_equal(val, val2) and np.array_equal(keep, keep2)
    assert not np.array_equal(val, stratified_split(labels, 0.1, seed=4)[1])
    assert len(stratified_split(labels, 0.0, seed=3)[1]) == 0
    with pytest.raises(ValueError):
        stratified_split(labels, 1.0, seed=0)


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(0, 40), min_size=1, max_size=6).filter(lambda c: sum(c) > 0),
    frac=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**32 - 1),
)
def test_stratified_split_hypothesis(counts, frac, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    keep, val = stratified_split(labels, frac, seed)
    assert sorted(np.concatenate([keep, val]).tolist()) == list(range(len(labels)))
    assert len(val) == round(frac * len(labels))
    for c, n in enumerate(counts):
        assert abs((labels[val] == c).sum() - frac * n) <= 1
    sub = stratified_subset(labels, len(val), seed, stream=9)
    assert len(sub) == len(val) and len(set(sub.tolist())) == len(sub)


@needs_fashion
def test_build_fashion_splits():
    cfg = DataConfig(name="fashion_mnist", seed=0)
    b = build_data(cfg)
    assert b.sizes == {"train": 54000, "val": 6000, "test": 10000}
    assert (b.num_classes, b.in_chans, b.input_size) == (10, 1, 28)
    tr, va = b.split_indices["train"], b.split_indices["val"]
    assert len(np.intersect1d(tr, va)) == 0 and len(np.union1d(tr, va)) == 60000
    assert torch.bincount(b.val.labels).tolist() == [600] * 10
    _, ty, _, _ = load_idx_dataset("fashion_mnist")
    assert torch.equal(ty[torch.from_numpy(va)], b.val.labels)
    same = build_data(cfg)
    assert np.array_equal(same.split_indices["val"], va) and torch.equal(same.val.images, b.val.images)
    other = build_data(cfg.model_copy(update={"seed": 1}))
    assert not np.array_equal(other.split_indices["val"], va)
    assert np.array_equal(other.split_indices["test"], b.split_indices["test"])

    # subset_train: stratified subset of the pool; the val split does not move
    sub = build_data(cfg.model_copy(update={"subset_train": 1000, "subset_test": 500}))
    assert sub.sizes == {"train": 1000, "val": 6000, "test": 500}
    assert np.isin(sub.split_indices["train"], tr).all()
    assert np.array_equal(sub.split_indices["val"], va)
    assert torch.bincount(sub.train.labels).tolist() == [100] * 10
    assert torch.bincount(sub.test.labels).tolist() == [50] * 10

    # classes: keep 3 (Dress) and 1 (Trouser), relabelled 0, 1 in the order given
    two = build_data(cfg.model_copy(update={"classes": [3, 1]}))
    assert two.num_classes == 2 and two.class_names == ["Dress", "Trouser"]
    assert two.sizes == {"train": 10800, "val": 1200, "test": 2000}
    orig = ty[torch.from_numpy(two.split_indices["train"])]
    assert torch.equal(orig, torch.where(two.train.labels == 0, 3, 1))
    assert set(two.test.labels.tolist()) == {0, 1}

    capped = build_data(cfg.model_copy(update={"subset_train": 60000}))  # a cap: more than exist keeps all
    assert capped.sizes["train"] == 54000
    with pytest.raises(PrunekitError, match=r"classes \[12\] out of range"):
        build_data(cfg.model_copy(update={"classes": [1, 12]}))


def test_config_validation():
    DataConfig(name="digits")
    bad = [
        {"val_fraction": 1.0},
        {"val_fraction": -0.1},
        {"batch_size": 0},
        {"subset_train": -5},
        {"crop_padding": -1},
        {"classes": [1, 1]},
        {"classes": [3]},
        {"image_size": 64},
        {"bogus": 1},
    ]
    for kw in bad:
        with pytest.raises(pydantic.ValidationError):
            DataConfig(name="digits", **kw)
    with pytest.raises(pydantic.ValidationError, match="val_fraction must be in"):
        DataConfig(name="digits", val_fraction=1.5)
    with pytest.raises(pydantic.ValidationError, match="imagefolder needs data_dir"):
        DataConfig(name="imagefolder")
    with pytest.raises(pydantic.ValidationError):
        DataConfig(name="svhn")


# ------------------------------------------------------------------------------------------------ loader


def test_tensor_loader_order_epochs_and_resume():
    a, b = labelled_loader(shuffle=True, seed=5), labelled_loader(shuffle=True, seed=5)
    first = seen_labels(a)
    assert first == seen_labels(b) == seen_labels(a)  # same seed+epoch -> same order, replayable
    assert sorted(first) == list(range(103)) and first != list(range(103))
    assert len(a) == 11 and len(list(a)) == 11
    a.set_epoch(1)
    assert seen_labels(a) != first
    assert seen_labels(labelled_loader(shuffle=True, seed=6)) != first
    # resume: a fresh loader at epoch 3 replays exactly what a long-running one produced
    run = labelled_loader(shuffle=True, seed=5, augment=BatchAugment(1, True))
    for e in range(4):
        run.set_epoch(e)
        batches = list(run)
    fresh = labelled_loader(shuffle=True, seed=5, augment=BatchAugment(1, True))
    fresh.set_epoch(3)
    for (x1, y1), (x2, y2) in zip(batches, fresh, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    dl = labelled_loader(shuffle=True, drop_last=True)
    assert len(dl) == 10 and all(len(y) == 10 for _, y in dl)
    assert seen_labels(labelled_loader(shuffle=False)) == list(range(103))
    threads = torch.get_num_threads()
    for _ in labelled_loader(threads=1, augment=BatchAugment(2, True)):
        assert torch.get_num_threads() == threads  # batch prep limits threads only while it runs


def test_tensor_loader_distributed_shards():
    ranks = [labelled_loader(shuffle=True, seed=2, rank=r, world_size=2) for r in range(2)]
    for e in (0, 1):
        for r in ranks:
            r.set_epoch(e)
        s0, s1 = seen_labels(ranks[0]), seen_labels(ranks[1])
        assert len(s0) == len(s1) == 51 and len(ranks[0]) == len(ranks[1]) == 6
        assert not set(s0) & set(s1)
        assert len(set(s0) | set(s1)) == 102
    with pytest.raises(ValueError):
        labelled_loader(rank=2, world_size=2)


def test_build_data_rank_sharding():
    cfg = DataConfig(name="digits", batch_size=32)
    full = build_data(cfg)
    r0, r1 = (build_data(cfg, rank=r, world_size=2) for r in (0, 1))
    ids0, ids1 = (set(r.split_indices["train"][r.train.indices().numpy()].tolist()) for r in (r0, r1))
    assert r0.train.num_samples == r1.train.num_samples == full.sizes["train"] // 2
    assert not ids0 & ids1 and len(ids0) == len(ids1) == len(r0.train) * 32  # drop_last per rank
    assert len(r0.train) == (full.sizes["train"] // 2) // 32
    assert len(r0.val.labels) == full.sizes["val"]  # eval splits are not sharded
    # eval_loader: every test sample on exactly one of 3 ranks (digits' test split is not a multiple of 3)
    n = full.sizes["test"]
    assert n % 3 and full.eval_loader("test") is full.test
    shards = [build_data(cfg, rank=r, world_size=3).eval_loader("test") for r in range(3)]
    seen = [s.indices().tolist() for s in shards]
    assert sorted(sum(seen, [])) == list(range(n)) and {len(x) for x in seen} == {n // 3, n // 3 + 1}
    assert [s.num_samples for s in shards] == [len(x) for x in seen]
    assert sum(len(y) for s in shards for _, y in s) == n


def test_random_crop_and_flip_are_correct():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 9, 7, generator=g)
    p = 2
    out = random_crop(x, p, g)
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    offsets = set()
    for i in range(len(x)):
        hits = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 9, dx : dx + 7])
        ]
        assert hits, f"sample {i} is not a window of the padded input"
        offsets.add(hits[0])
    assert len(offsets) > 5  # per-sample offsets, not one per batch
    f = random_hflip(x, 0.5, g)
    flipped = [torch.equal(f[i], x[i].flip(2)) for i in range(len(x))]
    kept = [torch.equal(f[i], x[i]) for i in range(len(x))]
    assert all(a or b for a, b in zip(flipped, kept, strict=True)) and any(flipped) and any(kept)


def test_augmentation_changes_pixels_keeps_shape():
    b = build_data(DataConfig(name="digits", batch_size=64, hflip=True, crop_padding=2))
    plain = b.make_loader("train", batch_size=64)
    aug = b.make_loader("train", batch_size=64, augment=True)
    (xp, yp), (xa, ya) = next(iter(plain)), next(iter(aug))
    assert xa.shape == xp.shape == (64, 1, 28, 28) and xa.dtype == torch.float32
    assert torch.equal(yp, ya)
    changed = (xa != xp).flatten(1).any(1)
    assert changed.float().mean() > 0.8
    vx, _ = next(iter(b.val))
    assert torch.equal(vx, next(iter(b.val))[0])  # val: no augmentation, no shuffle


@needs_fashion
def test_fashion_normalisation_stats():
    b = build_data(DataConfig(name="fashion_mnist"))
    x = torch.cat([x for x, _ in b.make_loader("train", batch_size=8192)])
    assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 1) < 0.01
    xb, _ = next(iter(b.train_epoch(0)))
    assert xb.shape == (128, 1, 28, 28) and len(b.train) == 54000 // 128


# ----------------------------------------------------------------------------------------------- CIFAR


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar(root: Path, kind: str = "cifar10", n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(0)
    sub, files, key = (
        ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels")
        if kind == "cifar10"
        else ("cifar-100-python", ["train", "test"], b"fine_labels")
    )
    d = root / sub
    d.mkdir(parents=True)
    first = None
    for i, f in enumerate(files):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [(i + j) % (10 if kind == "cifar10" else 100) for j in range(n)]
        _dump(d / f, {b"batch_label": b"x", b"data": data, key: labels})
        first = data if first is None else first
    if kind == "cifar100":
        _dump(d / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)]})
    return first


def test_cifar10_synthetic(tmp_path):
    first = write_cifar(tmp_path)
    for given_dir in (tmp_path, tmp_path / "cifar-10-batches-py"):
        tx, ty, vx, vy = load_cifar("cifar10", given_dir)
        assert tx.shape == (30, 3, 32, 32) and tx.dtype == torch.uint8 and vx.shape == (6, 3, 32, 32)
        assert ty.dtype == torch.int64 and ty[:6].tolist() == [0, 1, 2, 3, 4, 5]
        # channel-major rows: first 1024 bytes are the red plane, row by row
        assert np.array_equal(tx[0, 0].numpy().ravel(), first[0, :1024])
        assert np.array_equal(tx[0, 2, 31].numpy(), first[0, -32:])
    b = build_data(DataConfig(name="cifar10", data_dir=str(tmp_path), val_fraction=0.2, batch_size=8))
    assert b.sizes == {"train": 24, "val": 6, "test": 6} and b.in_chans == 3 and b.input_size == 32
    assert b.config.resolved_crop_padding == 4 and b.class_names[0] == "airplane"
    x, y = next(iter(b.train))
    assert x.shape == (8, 3, 32, 32) and y.dtype == torch.int64


def test_cifar100_synthetic_and_errors(tmp_path):
    write_cifar(tmp_path, "cifar100", n=12)
    b = build_data(DataConfig(name="cifar100", data_dir=str(tmp_path), val_fraction=0.0, batch_size=4))
    assert b.sizes == {"train": 12, "val": 0, "test": 12} and b.val is None and b.num_classes == 100
    assert b.class_names[:2] == ["c0", "c1"] and b.train.labels.max() == 11
    with pytest.raises(PrunekitError, match="val"):
        b.make_loader("val")
    with pytest.raises(PrunekitError, match=r"cifar10 not found: .*cifar-10-python.tar.gz"):
        load_cifar("cifar10", tmp_path)


def test_cifar_rejects_code_and_corrupt_files(tmp_path):
    write_cifar(tmp_path)
    d = tmp_path / "cifar-10-batches-py"
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    _dump(d / "data_batch_3", {b"data": Evil(), b"labels": []})
    with pytest.raises(PrunekitError, match="refusing"):
        load_cifar("cifar10", d)
    assert not marker.exists()
    (d / "data_batch_3").write_bytes(b"\x80\x02}q\x00(")  # truncated pickle
    with pytest.raises(PrunekitError, match="corrupt CIFAR batch"):
        load_cifar("cifar10", d)
    _dump(d / "data_batch_3", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(PrunekitError, match=r"expected uint8 \[N, 3072\]"):
        load_cifar("cifar10", d)


# ----------------------------------------------------------------------------------------- ImageFolder


def write_tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    counts = {"train": 6, "val": 2}
    for split, n in counts.items():
        for ci, cls in enumerate(["zebra", "ant"]):  # sorted order: ant=0, zebra=1
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                img = Image.fromarray(arr).convert("L") if i == 0 else Image.fromarray(arr)
                img.save(root / split / cls / f"{ci}_{i}.png")
    (root / "train" / "ant" / "notes.txt").write_text("not an image")


def test_imagefolder(tmp_path):
    write_tree(tmp_path)
    cfg = DataConfig(
        name="imagefolder", data_dir=str(tmp_path), image_size=16, val_fraction=0.25, batch_size=4
    )
    b = build_data(cfg)
    assert b.class_names == ["ant", "zebra"] and b.num_classes == 2 and b.in_chans == 3 and b.input_size == 16
    assert b.sizes == {"train": 9, "val": 3, "test": 4}
    assert len(b.train) == 2  # drop_last: 9 // 4
    b.train.set_epoch(0)
    batches = list(b.train)
    x, y = batches[0]
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    again = list(b.train)
    assert all(torch.equal(a[0], c[0]) for a, c in zip(batches, again, strict=True))
    b.train.set_epoch(1)
    assert not all(torch.equal(a[0], c[0]) for a, c in zip(batches, b.train, strict=True))
    tx, ty = next(iter(b.test))
    assert tx.shape == (4, 3, 16, 16) and ty.tolist() == [0, 0, 1, 1]
    # worker processes give the same augmented batches as the main process
    w2 = build_data(cfg.model_copy(update={"workers": 2}))
    w2.train.set_epoch(0)
    assert all(torch.equal(a[0], c[0]) for a, c in zip(batches, w2.train, strict=True))
    # the collated batch is the dataset's uint8 samples converted and normalised, in a worker as in the main process
    w2.test.set_epoch(0)
    wx, wy = next(iter(w2.test))
    raw = torch.stack([w2.test.dataset[i][0] for i in range(4)]).float() / 255.0
    m, s = torch.tensor(b.mean).view(1, -1, 1, 1), torch.tensor(b.std).view(1, -1, 1, 1)
    torch.testing.assert_close(wx, (raw - m) / s)
    assert torch.equal(wx, tx) and wy.tolist() == ty.tolist()
    # pin_memory: None (auto: only with CUDA) stays out of the config dump, so existing run hashes hold
    assert "pin_memory" not in cfg.model_dump()
    assert b.train.pin_memory is torch.cuda.is_available()
    assert build_data(cfg.model_copy(update={"pin_memory": False})).train.pin_memory is False
    # distributed: disjoint equal shards through DistributedSampler
    shards = [build_data(cfg, rank=r, world_size=2).train.indices() for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 4 and not set(shards[0]) & set(shards[1])
    # sharded evaluation: the 3 val images over 2 ranks, none dropped or repeated, in order
    ev = [build_data(cfg, rank=r, world_size=2).eval_loader("val") for r in (0, 1)]
    assert [e.indices() for e in ev] == [[0, 2], [1]] and [e.num_samples for e in ev] == [2, 1]
    assert sum(len(y) for e in ev for _, y in e) == 3


def test_imagefolder_errors_and_transforms(tmp_path):
    with pytest.raises(PrunekitError, match="split not found"):
        build_data(DataConfig(name="imagefolder", data_dir=str(tmp_path)))
    write_tree(tmp_path)
    bad = tmp_path / "val" / "ant" / "broken.png"
    bad.write_bytes(b"not a png")
    b = build_data(DataConfig(name="imagefolder", data_dir=str(tmp_path), image_size=16, batch_size=2))
    with pytest.raises(PrunekitError, match="broken.png"):
        list(b.test)
    # eval transform: shorter side -> 18, center crop 16, left half red / right half blue survives
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40, 0] = 255
    arr[:, 40:, 2] = 255
    out = eval_transform(Image.fromarray(arr), 16)
    assert out.shape == (3, 16, 16) and out.dtype == torch.uint8
    assert out[0, :, 0].min() == 255 and out[2, :, -1].min() == 255
    rng = np.random.default_rng(0)
    for w, h in [(50, 20), (20, 50), (7, 7), (300, 200)]:
        for _ in range(50):
            left, top, right, bottom = random_resized_crop_box(w, h, rng)
            assert 0 <= left < right <= w and 0 <= top < bottom <= h


# --------------------------------------------------------------------------------------------- digits


def test_digits():
    tx, ty, vx, vy = load_digits28()
    assert tx.shape[1:] == vx.shape[1:] == (1, 28, 28) and tx.dtype == torch.uint8
    assert len(tx) + len(vx) == 1797 and len(vx) == 359
    assert sorted(set(ty.tolist())) == list(range(10)) == sorted(set(vy.tolist()))
    b0 = build_data(DataConfig(name="digits", seed=0))
    b1 = build_data(DataConfig(name="digits", seed=1))
    assert b0.num_classes == 10 and b0.sizes == {"train": 1294, "val": 144, "test": 359}
    assert torch.equal(b0.test.images, b1.test.images)  # fixed test split
    assert not np.array_equal(b0.split_indices["val"], b1.split_indices["val"])
    assert "digits: train 1294 / val 144 / test 359" in b0.summary()
    x, y = next(iter(b0.train))
    assert x.shape == (128, 1, 28, 28) and y.max() <= 9


def test_proxy_split_is_seeded_per_class_and_disjoint_and_loaders_take_indices():
    from prunekit.data.splits import proxy_split

    b = build_data(DataConfig(name="fashion_mnist", seed=0, subset_train=2000))
    labels = b.split_labels("train")
    tr, va = proxy_split(labels, classes=4, train_per_class=30, val_per_class=7, seed=3)
    assert len(np.intersect1d(tr, va)) == 0
    chosen = np.unique(labels[tr])
    assert len(chosen) == 4 and set(np.unique(labels[va])) == set(chosen)
    assert all((labels[tr] == c).sum() == 30 and (labels[va] == c).sum() == 7 for c in chosen)
    again = proxy_split(labels, classes=4, train_per_class=30, val_per_class=7, seed=3)
    assert np.array_equal(again[0], tr) and np.array_equal(again[1], va)
    other = proxy_split(labels, classes=4, train_per_class=30, val_per_class=7, seed=4)
    assert not np.array_equal(other[0], tr)
    loader = b.make_loader("train", batch_size=64, indices=va)
    assert sum(len(y) for _, y in loader) == len(va)
    assert sorted(torch.cat([y for _, y in loader]).tolist()) == sorted(labels[va].tolist())
    with pytest.raises(PrunekitError, match="fewer than train_per_class"):
        proxy_split(labels, classes=None, train_per_class=500, val_per_class=50, seed=0)
    with pytest.raises(PrunekitError, match="classes <= 10"):
        proxy_split(labels, classes=11, train_per_class=1, val_per_class=1, seed=0)
