"""Timing ONNX models in DeepSparse 1.8.0 (Neural Magic), the one CPU runtime that skips zero weights: optional.

DeepSparse is never a dependency of prunekit and never imported by it: ``deepsparse==1.8.0`` needs Python < 3.12,
``onnx<1.15`` and ``numpy<2``, and its licence allows evaluation and testing only (no production use, no
redistribution). The user installs it into an environment of its own and names that interpreter
(``--deepsparse-python`` or :data:`ENV_VAR`); this module runs :mod:`prunekit.cost.deepsparse_worker` there as a
subprocess (with ``NM_DISABLE_ANALYTICS=1``), one JSON job per call, and reads one JSON result back. Measured
speed-ups over ONNX Runtime are in ``shared/reference/cpu-runtimes.md`` (sparsity pays at density <= 0.3).

Every failure (no interpreter configured, deepsparse not importable there, a model that does not compile, a
timeout, a malformed reply) is a one-line :class:`~prunekit.errors.PrunekitError` with the fix.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from prunekit.errors import PrunekitError

log = logging.getLogger(__name__)

ENV_VAR = "PRUNEKIT_DEEPSPARSE_PYTHON"
MAX_IR_VERSION = 9  # the newest ONNX IR that DeepSparse 1.8.0 loads
MAX_OPSET = 19  # the newest opset it loads (it refuses 20)
WORKER = Path(__file__).with_name("deepsparse_worker.py")
SETUP = (
    'set it up with `python3.11 -m venv ~/ds-env && ~/ds-env/bin/pip install deepsparse==1.8.0 "onnx<1.15" '
    f'"numpy<2"`, then pass `--deepsparse-python ~/ds-env/bin/python` or set {ENV_VAR}=~/ds-env/bin/python '
    "(DeepSparse's licence allows evaluation and testing only)"
)


def _line(text: str) -> str:
    return " ".join(str(text).split())


def find_python(explicit: str | None = None) -> str:
    """The interpreter of the DeepSparse environment: ``explicit``, else the :data:`ENV_VAR` environment variable.

    Returns:
        The absolute path of that interpreter (``~`` expanded; a bare name is looked up on ``PATH``).

    Raises:
        PrunekitError: neither is set, or the path is not an executable; the message says how to set one up.
    """
    given = explicit or os.environ.get(ENV_VAR)
    if not given:
        raise PrunekitError(f"DeepSparse runs in a Python environment of its own, and none is given: {SETUP}")
    found = shutil.which(os.path.expanduser(given))
    if found is None:
        raise PrunekitError(f"DeepSparse python {given!r} is not an executable file: {SETUP}")
    return os.path.abspath(found)


def _run(python: str, job: dict, timeout_s: float) -> dict:
    """Run the worker on ``job`` in ``python``; its JSON reply (never one with an ``error``)."""
    env = {**os.environ, "NM_DISABLE_ANALYTICS": "1"}
    try:
        proc = subprocess.run(
            [python, str(WORKER)],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise PrunekitError(
            f"the DeepSparse worker ({python}) did not finish within {timeout_s:.0f} s; time fewer models per call"
        ) from None
    except OSError as exc:
        raise PrunekitError(f"cannot run the DeepSparse python {python}: {_line(exc)}: {SETUP}") from None
    last_err = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "no output")
    try:
        reply = json.loads(proc.stdout)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise PrunekitError(
            f"the DeepSparse worker ({python}) exited with code {proc.returncode} without a result: "
            f"{_line(last_err)}"
        )
    if "error" in reply:
        hint = f": {SETUP}" if "not importable" in str(reply["error"]) else ""
        raise PrunekitError(_line(f"{reply['error']}{hint}"))
    return reply


@cache
def _probe(python: str) -> dict:
    return _run(python, {"probe": True}, timeout_s=120)


def probe(python: str | None = None) -> dict:
    """What the DeepSparse environment runs: ``{"deepsparse": version, "python": version, "cpu": model name,
    "isa": DeepSparse's ISA ("avx2", "avx512", ...) or None}``; cached per interpreter.

    Args:
        python: the interpreter, as for :func:`find_python`.

    Raises:
        PrunekitError: no interpreter, or deepsparse is not importable there (the message says how to install it).
    """
    return dict(_probe(find_python(python)))


def time_models(
    paths: Sequence[str | Path],
    batch: int,
    *,
    threads: int = 1,
    rounds: int = 3,
    warmup: int = 2,
    min_time_s: float = 0.05,
    min_runs: int = 3,
    max_runs: int = 50,
    python: str | None = None,
    timeout_s: float | None = None,
) -> list[list[float]]:
    """Time ONNX files in DeepSparse, interleaved: ``result[i][r]`` is model ``i``'s median ms in round ``r``.

    One worker process compiles every model once (``batch``, ``threads`` cores) and feeds it random inputs of its
    declared shapes; runs per round are sized from ``warmup`` untimed calls to last about ``min_time_s`` (between
    ``min_runs`` and ``max_runs``), and the ``rounds`` rounds rotate the order by one model each, as
    :func:`prunekit.cost.runtimes.time_interleaved` does. Times are milliseconds per call of one batch.

    Args:
        paths: ONNX files with fixed input shapes (the batch dimension must equal ``batch``); one newer than
            ONNX IR 9 is handed over as an IR-9 copy (:func:`_readable`), the file itself is not changed.
        python: the DeepSparse interpreter, as for :func:`find_python`.
        timeout_s: limit for the whole call; default 60 s plus 30 s per model.

    Returns:
        ``len(paths)`` lists of ``rounds`` floats (``[]`` for no paths).

    Raises:
        PrunekitError: invalid settings, no interpreter, deepsparse not importable, a model of opset > 19 or one
            that does not compile or run (named), a timeout or a malformed reply.
    """
    if not paths:
        return []
    if (
        min(batch, threads, rounds, min_runs, max_runs) < 1
        or warmup < 0
        or min_time_s < 0
        or min_runs > max_runs
    ):
        raise PrunekitError(
            "DeepSparse timing needs batch, threads, rounds, min_runs >= 1, min_runs <= max_runs, warmup >= 0 and "
            f"min_time_s >= 0 (got batch={batch}, threads={threads}, rounds={rounds}, warmup={warmup}, "
            f"min_time_s={min_time_s}, min_runs={min_runs}, max_runs={max_runs})"
        )
    python = find_python(python)
    with tempfile.TemporaryDirectory(prefix="prunekit-ds-ir-") as tmp:
        models = [_readable(Path(p), Path(tmp) / f"{i}-{Path(p).name}") for i, p in enumerate(paths)]
        job = dict(
            models=models,
            batch=int(batch),
            threads=int(threads),
            rounds=int(rounds),
            warmup=int(warmup),
            min_time_s=float(min_time_s),
            min_runs=int(min_runs),
            max_runs=int(max_runs),
        )
        reply = _run(python, job, timeout_s if timeout_s is not None else 60.0 + 30.0 * len(models))
    ms = reply.get("ms")
    if not (
        isinstance(ms, list)
        and len(ms) == len(models)
        and all(isinstance(m, list) and len(m) == rounds for m in ms)
        and all(isinstance(t, (int, float)) and t >= 0 for m in ms for t in m)
    ):
        raise PrunekitError(
            f"the DeepSparse worker ({python}) gave a malformed result: expected {len(models)} lists of "
            f"{rounds} times, got {_line(repr(ms))[:120]}"
        )
    for path, frac in zip(paths, reply.get("supported") or [], strict=False):  # the caller's names
        if isinstance(frac, (int, float)) and frac < 1.0:
            log.warning("DeepSparse runs only %.0f%% of %s itself (the rest falls back)", 100 * frac, path)
    return [[float(t) for t in m] for m in ms]


def _readable(path: Path, spare: Path) -> str:
    """``path``, or where its IR version is newer than DeepSparse 1.8 reads (its onnx < 1.15 stops at IR 9; onnx
    1.16+ writes IR 10), a copy at ``spare`` that declares IR 9. The graphs prunekit times use no IR-10 feature
    (IR 10 added uint4 / int4 types and function overloads), so the copy computes the same model.

    Raises:
        PrunekitError: the model's opset is newer than DeepSparse runs (the message says how to export it).
    """
    import onnx

    from prunekit.export import onnx_opset

    path = path.resolve()
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # not ONNX: let the worker name the file
        log.debug("cannot read %s to check its IR version: %s", path, exc)
        return str(path)
    opset = onnx_opset(proto)
    if opset > MAX_OPSET:
        # onnx's version_converter cannot be trusted here: 18 -> 17 leaves ReduceMean an attribute opset 17 lacks
        raise PrunekitError(
            f"{path} uses ONNX opset {opset}; DeepSparse 1.8 runs opsets up to {MAX_OPSET}: export it with the "
            f"TorchScript exporter at opset 17 (prunekit.export.export_onnx(..., exporter='torchscript'))"
        )
    if proto.ir_version <= MAX_IR_VERSION:
        return str(path)
    proto.ir_version = MAX_IR_VERSION
    onnx.save(proto, str(spare))
    return str(spare)


def time_interleaved_onnx(
    models_bytes: Sequence[bytes],
    batch: int,
    *,
    threads: int = 1,
    rounds: int = 3,
    warmup: int = 2,
    min_time_s: float = 0.05,
    min_runs: int = 3,
    max_runs: int = 50,
    python: str | None = None,
    timeout_s: float | None = None,
) -> list[float]:
    """Median over rounds of each serialized ONNX model's per-round median (ms per call of one batch), timed in
    DeepSparse by :func:`time_models` (the models are written to a temporary directory, removed afterwards).

    This is the DeepSparse counterpart of :func:`prunekit.cost.runtimes.time_interleaved` for the one-node graphs
    of :func:`prunekit.cost.runtimes.onnx_model`; the arguments and errors are :func:`time_models`'.

    Returns:
        One float per model, in order.
    """
    if not models_bytes:
        return []
    with tempfile.TemporaryDirectory(prefix="prunekit-deepsparse-") as tmp:
        paths = []
        for i, data in enumerate(models_bytes):
            path = Path(tmp) / f"model_{i}.onnx"
            path.write_bytes(data)
            paths.append(path)
        per_round = time_models(
            paths,
            batch,
            threads=threads,
            rounds=rounds,
            warmup=warmup,
            min_time_s=min_time_s,
            min_runs=min_runs,
            max_runs=max_runs,
            python=python,
            timeout_s=timeout_s,
        )
    return [float(statistics.median(r)) for r in per_round]


if __name__ == "__main__":  # pragma: no cover - `python -m prunekit.cost.deepsparse`: print the probe
    print(json.dumps(probe(sys.argv[1] if len(sys.argv) > 1 else None)))
