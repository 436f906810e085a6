"""Times ONNX models in DeepSparse: a standalone script run by DeepSparse's own interpreter, not part of prunekit.

DeepSparse 1.8.0 needs Python < 3.12, ``onnx<1.15`` and ``numpy<2``, so it lives in an environment of its own and
:mod:`prunekit.cost.deepsparse` runs this file there (``<that python> deepsparse_worker.py``). It imports only the
standard library, numpy and ``deepsparse``.

Protocol: one JSON job on stdin, one JSON object on stdout (everything else, DeepSparse's banner and logs included,
goes to stderr); the exit code is 0 whenever a JSON object was written.

* ``{"probe": true}`` -> ``{"deepsparse": version, "python": version, "cpu": model name, "isa": "avx2" | ...}``.
* ``{"models": [path.onnx, ...], "batch": B, "threads": T, "rounds": R, "warmup": W, "min_time_s": s,
  "min_runs": m, "max_runs": M}`` -> ``{"ms": [[round 1 ms, ..., round R ms] per model], "supported": [fraction
  of ops DeepSparse runs itself, per model]}``. Every model is compiled once (batch ``B``, ``T`` cores) and fed
  random inputs of its declared shapes; after ``W`` untimed calls its runs per round are sized to last about
  ``s`` seconds (between ``m`` and ``M``); then ``R`` rounds, rotated by one model each, time every model, and a
  round's value is the median of its runs in milliseconds (as ``prunekit.cost.runtimes.time_interleaved``).
* Any failure (bad job, deepsparse not importable, a model that does not compile or run) -> ``{"error": "..."}``,
  one line naming the problem (and the file).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time

JOB_KEYS = ("batch", "threads", "rounds", "warmup", "min_time_s", "min_runs", "max_runs")


class JobError(Exception):
    """A problem reported as ``{"error": ...}``."""


def main() -> int:
    # this script's folder holds prunekit's deepsparse.py, which would shadow the real package
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    out = os.fdopen(os.dup(1), "w")  # the result's channel; fd 1 now goes to stderr, so native prints cannot
    os.dup2(2, 1)  # corrupt the JSON
    sys.stdout = sys.stderr
    try:
        reply = handle(sys.stdin.read())
    except JobError as exc:
        reply = {"error": " ".join(str(exc).split())}
    out.write(json.dumps(reply) + "\n")
    out.flush()
    return 0


def handle(text: str) -> dict:
    try:
        job = json.loads(text)
    except ValueError as exc:
        raise JobError(f"bad job: not JSON ({exc})") from None
    if not isinstance(job, dict):
        raise JobError("bad job: expected a JSON object")
    try:
        import deepsparse
    except Exception as exc:  # ImportError, or a wheel that does not load on this CPU / Python
        raise JobError(
            f"deepsparse is not importable in {sys.executable}: {type(exc).__name__}: {exc}"
        ) from None
    if job.get("probe"):
        return {
            "deepsparse": str(getattr(deepsparse, "__version__", "unknown")),
            "python": platform.python_version(),
            "cpu": cpu_name(),
            "isa": cpu_isa(),
        }
    models = job.get("models")
    missing = [k for k in JOB_KEYS if not isinstance(job.get(k), (int, float))]
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models) or missing:
        raise JobError(
            f"bad job: needs 'models' (a list of paths) and numbers {', '.join(missing or JOB_KEYS)}"
        )
    engines = [compile_one(deepsparse, path, int(job["batch"]), int(job["threads"])) for path in models]
    ms = time_rotated(
        engines,
        models,
        rounds=int(job["rounds"]),
        warmup=int(job["warmup"]),
        min_time_s=float(job["min_time_s"]),
        min_runs=int(job["min_runs"]),
        max_runs=int(job["max_runs"]),
    )
    return {"ms": ms, "supported": [float(getattr(e, "fraction_of_supported_ops", 1.0)) for e in engines]}


def compile_one(deepsparse, path: str, batch: int, threads: int):
    try:
        return deepsparse.compile_model(path, batch_size=batch, num_cores=threads)
    except Exception as exc:
        raise JobError(f"DeepSparse cannot compile {path}: {type(exc).__name__}: {exc}") from None


def time_rotated(engines, paths, *, rounds, warmup, min_time_s, min_runs, max_runs) -> list[list[float]]:
    """Per model, the median ms of each of ``rounds`` rotated rounds (see the module docstring)."""
    fns, runs = [], []
    for engine, path in zip(engines, paths):  # noqa: B905 - no strict= before Python 3.10
        try:
            inputs = engine.generate_random_inputs()
            engine.run(inputs)  # validates the inputs once; the timed calls skip that
            t0 = time.perf_counter()
            for _ in range(max(1, warmup)):
                engine.run(inputs, val_inp=False)
        except Exception as exc:
            raise JobError(f"DeepSparse cannot run {path}: {type(exc).__name__}: {exc}") from None
        est = max((time.perf_counter() - t0) / max(1, warmup), 1e-6)
        fns.append(lambda e=engine, x=inputs: e.run(x, val_inp=False))
        runs.append(int(min(max_runs, max(min_runs, math.ceil(min_time_s / est)))))
    per: list[list[float]] = [[] for _ in fns]
    for r in range(rounds):
        shift = r % len(fns) if fns else 0
        for i in list(range(shift, len(fns))) + list(range(shift)):
            times = []
            for _ in range(runs[i]):
                t0 = time.perf_counter_ns()
                fns[i]()
                times.append((time.perf_counter_ns() - t0) / 1e6)
            per[i].append(float(statistics.median(times)))
    return per


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="ignore") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa() -> str | None:
    try:
        from deepsparse.cpu import cpu_architecture

        return str(cpu_architecture().isa)
    except Exception:
        return None


if __name__ == "__main__":
    sys.exit(main())
