"""Run ``prunekit check`` over a matrix of torchvision and timm classification CNNs and record the results.

For every model spec it runs, one model at a time, as a subprocess with ``OMP_NUM_THREADS=1``::

    prunekit check SPEC --ratio R --input-size S --json [EXTRA...]

(prune R of every channel group by L1 norm; checks: something pruned, output shape unchanged, forward/backward,
pruned == masked, analytic == measured MACs/params, ONNX Runtime == PyTorch; exit 0 = all pass, 1 = a check
failed, 2 = usage/trace error with one line on stderr). It records the exit code, wall time, the command, the
parsed JSON (groups, dropped groups by reason, channels pruned, MACs/params before and after, every check's
ok/detail) or the last stderr line, and rewrites the results JSON atomically after each model, so a killed run
resumes where it stopped (models already in the file are skipped unless ``--force``). At the end it prints a
markdown table (model | exit | groups (dropped) | channels pruned | MACs before -> after (ratio) | failed checks /
error | wall) and writes it next to the JSON as ``<tag>.md``; with ``--density`` / ``--conv-groups`` in the extra
flags the table also shows the sparse / grouped layers (and how many convs were not grouped) and the effective MACs
(non-zero weights x output positions: a count, not a speed-up) from the JSON facts. ``--compare A.json B.json ...``
prints one table over finished results files (a row per model; per file: outcome, MACs ratio, effective MACs ratio
where it differs, grouped layers) and runs nothing.

The script itself needs only the standard library; it runs whichever ``prunekit`` you give it. torchvision and
timm import only with a torch build that matches them, and the project venv (.venv, CPU torch pinned by
constraints.txt) must not be changed, so the matrix runs from a separate venv outside the repo.

Install command (the one used for bench/results/model_matrix/baseline-ratio0.5.json; the machine's pip config
caps torch<=2.14.1 / torchvision<=0.29.1, and the default PyPI wheels are CUDA builds, several GB)::

    python3 -m venv /work/tv-venv
    /work/tv-venv/bin/pip install torch torchvision timm
    /work/tv-venv/bin/pip install -e /work/main      # resolves prunekit's other deps, keeps that torch
    /work/tv-venv/bin/pip show torch                 # check: still the torch installed above

    -> Python 3.11.7, torch 2.14.1+cu130 (run on CPU), torchvision 0.29.1+cu130, timm 1.0.31,
       onnx 1.23.2, onnxruntime 1.32.0, onnxscript 0.7.2, torch-pruning 1.6.1, numpy 2.4.6

How to run (from the repo root; ~15 min for the default matrix on 2 busy cores, 10-55 s a model)::

    python bench/model_matrix.py --prunekit /work/tv-venv/bin/prunekit --tag baseline-ratio0.5 --git-rev HEAD
    python bench/model_matrix.py --prunekit /work/tv-venv/bin/prunekit --models torchvision:resnet18:num_classes=10
    python bench/model_matrix.py --prunekit /work/tv-venv/bin/prunekit --extra "--density 0.5" --tag density0.5
    python bench/model_matrix.py --compare bench/results/model_matrix/{ratio0.5,ratio0.5-density0.5}.json

``--git-rev REV`` runs prunekit's ``src/`` as of that commit (``git archive`` into a temporary directory put first
on PYTHONPATH, which shadows the editable install) instead of the working tree, so edits in progress cannot leak
into a run; without it the working tree runs as it is, and the commit plus a ``+dirty`` mark are recorded.
``--extra`` is split like a shell line and appended to every ``check`` command (recorded in the results); write
``--extra=--no-onnx`` when the value is a single flag without a space. A model may carry its own input size as
``SPEC@SIZE`` in ``--models`` (its results key is then ``SPEC@SIZE``). Re-running the same command resumes; a
results file made with other settings (ratio, input size, extra flags, git rev) is refused unless ``--force``
(which starts it again, or with the same settings re-runs the listed models in place).

Matrix notes: googlenet and inception_v3 are built with ``aux_logits=False`` (their aux classifiers run only in
train mode, so the eval-mode trace never sees them and the pruned model's train-mode forward fails) and
``init_weights=True`` (silences torchvision's warning); inception_v3 needs an input of at least 75 (64 fails to
trace), the matrix's 128 is fine.

Models are built with random weights: torchvision's default is ``weights=None`` and timm's ``pretrained=False``.
To make sure of it, each run gets empty TORCH_HOME / HF_HOME / XDG_CACHE_HOME directories and HF_HUB_OFFLINE=1;
any file left in the first two, or a weights file (.pth, .safetensors, ...) in the third, is recorded under
``downloads`` (expected: none; ONNX Runtime keeps a telemetry device id under XDG_CACHE_HOME, which is ignored).

What it does not do: it does not train or evaluate accuracy, measure latency, use a GPU, run models in parallel,
or fix failing models; the checks are those of the ``prunekit check`` it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

NC = "num_classes=10"
TORCHVISION = [
    "alexnet",
    "vgg11_bn",
    "vgg16",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "densenet121",
    "googlenet:aux_logits=False,init_weights=True",  # aux heads: a tuple output in train mode
    "inception_v3:aux_logits=False,init_weights=True",  # 128 works (the aux head would need >= 299)
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "mnasnet0_5",
    "mnasnet1_0",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
    "squeezenet1_0",
    "squeezenet1_1",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "convnext_tiny",
]
TIMM = [
    "resnet18",
    "mobilenetv3_large_100",
    "efficientnet_b0",
    "ghostnet_100",  # Ghost modules: cat of a conv and a cheap depthwise conv, then a channel slice
    "mixnet_s",  # mixed-kernel depthwise convs: split / cat of channel chunks
    "convnext_atto",
    "regnetx_002",
]


def _with_nc(source: str, name: str) -> str:
    name, sep, opts = name.partition(":")
    return f"{source}:{name}:{opts + ',' if sep else ''}{NC}"


DEFAULT_MODELS = [_with_nc("torchvision", n) for n in TORCHVISION] + [_with_nc("timm", n) for n in TIMM]
SETTINGS_KEYS = ("ratio", "input_size", "extra", "git_rev")
CACHE_VARS = ("TORCH_HOME", "HF_HOME", "XDG_CACHE_HOME")
WEIGHTS = {".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".npz", ".h5"}


def split_size(item: str, default: int) -> tuple[str, int]:
    """``"SPEC@SIZE"`` -> ``(SPEC, SIZE)``; ``"SPEC"`` -> ``(SPEC, default)``."""
    spec, at, size = item.rpartition("@")
    return (spec, int(size)) if at and size.isdigit() else (item, default)


def split_models(text: str) -> list[str]:
    """Split a comma list of specs; a ``key=value`` piece belongs to the spec before it (``a:x=1,y=2,b``)."""
    specs: list[str] = []
    for piece in filter(None, (s.strip() for s in text.split(","))):
        if specs and re.match(r"^\w+\s*=", piece):
            specs[-1] += "," + piece
        else:
            specs.append(piece)
    return specs


def interpreter_of(prunekit: str) -> str:
    """The Python that runs the ``prunekit`` console script (its ``#!`` line), else this one."""
    try:
        first = Path(prunekit).read_text(errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return sys.executable
    return first[2:].strip() if first.startswith("#!") and "python" in first else sys.executable


_ENV_PROBE = r"""
import importlib.metadata as md, json, platform, os
import prunekit
out = {"python": platform.python_version(), "prunekit_source": os.path.dirname(prunekit.__file__)}
for d in ("torch", "torchvision", "timm", "onnx", "onnxruntime", "onnxscript", "torch-pruning", "numpy"):
    try:
        out[d] = md.version(d)
    except md.PackageNotFoundError:
        out[d] = None
try:
    import torch
    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
except Exception as exc:
    out["torch_error"] = repr(exc)
print(json.dumps(out))
"""


def environment(prunekit: str) -> dict:
    """Versions seen by ``prunekit``'s interpreter, the CPU, and the git state of the prunekit source."""
    env: dict = {"prunekit": prunekit, "cpu_count": os.cpu_count()}
    try:
        probe = subprocess.run(
            [interpreter_of(prunekit), "-c", _ENV_PROBE], capture_output=True, text=True, timeout=300
        )
        env.update(json.loads(probe.stdout.strip().splitlines()[-1]))
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as exc:
        env["probe_error"] = f"{type(exc).__name__}: {exc}"
    src = env.get("prunekit_source")
    if src:
        git = ["git", "-C", src]
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "."], capture_output=True, text=True)
        if head.returncode == 0:
            env["git_commit"] = head.stdout.strip()
            env["git_dirty"] = [line[3:] for line in dirty.stdout.splitlines()]
    return env


def snapshot(rev: str, dest: str) -> str:
    """Extract ``src/`` of git revision ``rev`` of this repo into ``dest``; returns the full commit id."""
    repo = Path(__file__).resolve().parents[1]
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", commit, "src"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", dest], input=archive.stdout, check=True)
    return commit


def run_one(prunekit: str, spec: str, size: int, ratio: float, extra: list[str], timeout: float) -> dict:
    """Run ``prunekit check`` on one model (the environment, PYTHONPATH included, is inherited)."""
    cmd = [prunekit, "check", spec, "--ratio", str(ratio), "--input-size", str(size), "--json", *extra]
    with tempfile.TemporaryDirectory(prefix="model_matrix_cache_") as cache:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
        env |= {var: os.path.join(cache, var.lower()) for var in CACHE_VARS}
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
            code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            code, stdout, stderr = None, "", _text(exc.stderr) + f"\nkilled after {timeout:g} s"
        wall = time.perf_counter() - t0
        downloads = [  # model hubs' caches; weight files anywhere (ONNX Runtime keeps a device id in XDG)
            str(f.relative_to(cache))
            for f in Path(cache).rglob("*")
            if f.is_file() and (f.parts[len(Path(cache).parts)] != "xdg_cache_home" or f.suffix in WEIGHTS)
        ]
    rec: dict = {
        "spec": spec,
        "input_size": size,
        "command": shlex.join(cmd),
        "exit": code,
        "wall_s": round(wall, 1),
        "downloads": downloads,
        "finished": _now(),
    }
    try:
        rec["result"] = json.loads(stdout)
        rec["failed"] = [c["name"] for c in rec["result"]["checks"] if not c["ok"]]
    except (ValueError, KeyError, TypeError):
        lines = [line for line in stderr.splitlines() if line.strip()]
        rec["error"] = lines[-1].strip().removeprefix("error: ") if lines else f"no output (exit {code})"
        rec["stderr_tail"] = "\n".join(lines[-40:])[-6000:]
        frames = [
            line.strip() for line in lines if line.lstrip().startswith("File ") and "/prunekit/" in line
        ]
        if frames:  # a traceback: its innermost prunekit frame, path from prunekit/ on
            rec["where"] = re.sub(r'File ".*/(prunekit/[^"]*)"', r"\1", frames[-1])
    rec["outcome"] = outcome(rec)
    return rec


def outcome(rec: dict) -> str:
    """``pass`` | ``check failed`` | ``error`` (exit 2: usage/trace error) | ``crash`` (traceback) | ``timeout``."""
    if rec["exit"] is None:
        return "timeout"
    if "result" in rec:
        return "pass" if rec["exit"] == 0 and not rec["failed"] else "check failed"
    return "error" if rec["exit"] == 2 else "crash"


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then ``os.replace`` it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -------------------------------------------------------------------------------------------------- report


def _si(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short_name(spec: str) -> str:
    """``torchvision:googlenet:aux_logits=False,num_classes=10`` -> ``tv:googlenet (aux_logits=False)``."""
    source, _, rest = spec.partition(":")
    if source not in ("timm", "torchvision"):  # a builtin or file spec
        source, rest = "", spec
    name, _, opts = rest.partition(":")
    keep = [o for o in opts.split(",") if o and o != NC and not o.startswith("init_weights")]
    prefix = {"torchvision": "tv:", "timm": "timm:"}.get(source, "")
    return f"{prefix}{name}" + (f" ({','.join(keep)})" if keep else "")


WEIGHT_FLAGS = ("--density", "--conv-groups")  # weight-level plans: the table gains two columns


def weight_level(extra: list[str]) -> bool:
    """Whether the ``check`` flags ask for block sparsity or group convs."""
    return any(e.partition("=")[0] in WEIGHT_FLAGS for e in extra)


def table_row(rec: dict, size: int, weights: bool = False) -> str:
    """One table line; the model's input size is shown when it is not ``size``; ``weights``: the sparse /
    grouped layers (and layers not grouped) and the effective MACs (non-zero weights) from the JSON facts."""
    r = rec.get("result")
    name = short_name(rec["spec"]) + (f" @{rec['input_size']}" if rec["input_size"] != size else "")
    wall = f"{rec['wall_s']:.0f}"
    if r is None:
        why = f"{rec['outcome']}" + (f" ({rec['where']})" if rec.get("where") else "") + f": {rec['error']}"
        return f"| {name} | {rec['exit']} | | | |{' | |' if weights else ''} {_cell(why)} | {wall} |"
    b, p = r["baseline"]["macs"], r["pruned"]["macs"]
    fails = [c for c in r["checks"] if not c["ok"]]
    why = "; ".join(f"{c['name']}: {c['detail']}" for c in fails) or "—"
    if rec["downloads"]:
        why += f"; DOWNLOADED: {', '.join(rec['downloads'])}"
    macs = f"{_si(b)} -> {_si(p)} ({p / b:.2f})" if b else "-"
    if weights:
        eff = r["pruned"].get("effective_macs", p)
        not_grouped = len(r.get("not_grouped") or {})
        layers = f"{len(r.get('sparse_layers', []))} / {len(r.get('grouped_layers', []))}"
        macs += f" | {layers}{f' ({not_grouped} not)' if not_grouped else ''} | "
        macs += f"{_si(eff)} ({eff / b:.2f})" if b else "-"
    return (
        f"| {name} | {rec['exit']} | {r['groups']} ({len(r['dropped_groups'])}) | "
        f"{r['channels_pruned']}/{r['channels']} | {macs} | {_cell(why)} | {wall} |"
    )


def markdown(data: dict, specs: list[str]) -> str:
    s, env = data["settings"], data["environment"]
    recs = [data["models"][sp] for sp in specs if sp in data["models"]]
    weights = weight_level(s["extra"])
    passed = sum(1 for r in recs if r["exit"] == 0)
    versions = ", ".join(
        f"{k} {env.get(k)}" for k in ("torch", "torchvision", "timm", "onnxruntime") if env.get(k)
    )
    commits = sorted(
        {(r.get("prunekit_commit") or "?")[:10] + ("+dirty" if r.get("prunekit_dirty") else "") for r in recs}
    )
    lines = [
        f"# prunekit check model matrix: {data['tag']}",
        "",
        f"`{data['commands'][0]}`"
        + (f" (+{len(data['commands']) - 1} later runs: see the JSON)" if len(data["commands"]) > 1 else "")
        + f"; each model: `prunekit check SPEC --ratio {s['ratio']} --input-size "
        f"{s['input_size']} --json{' ' + shlex.join(s['extra']) if s['extra'] else ''}`, OMP_NUM_THREADS=1.",
        f"{versions}; prunekit at {', '.join(commits) or '?'}"
        + (
            f" (`--git-rev {s['git_rev']}`)."
            if s.get("git_rev")
            else " (working tree; +dirty: uncommitted edits)."
        ),
        "",
        f"**{passed} of {len(recs)} pass** (exit 0)"
        + (f"; {len(specs) - len(recs)} not run yet" if len(recs) < len(specs) else "")
        + ".",
        "",
        "| model | exit | groups (dropped) | channels pruned | MACs before -> after (ratio) |"
        + (" sparse / grouped layers | effective MACs (ratio) |" if weights else "")
        + " failed checks / error | wall s |",
        "|---|---:|---:|---:|---|" + ("---:|---|" if weights else "") + "---|---:|",
        *(table_row(r, s["input_size"], weights) for r in recs),
    ]
    return "\n".join(lines) + "\n"


def compare_cell(rec: dict | None) -> str:
    """``pass 0.27`` (MACs ratio), ``+ eff 0.14`` (effective MACs ratio, when it differs) and ``, 20 grouped``;
    else the outcome and the failed checks or the error's type."""
    if rec is None:
        return "not run"
    r = rec.get("result")
    if r is None:
        return f"{rec['outcome']}: {_cell(rec['error'].partition(':')[0], 40)}"
    b, p = r["baseline"]["macs"], r["pruned"]["macs"]
    eff = r["pruned"].get("effective_macs", p)
    text = rec["outcome"] + (f" {p / b:.2f}" if b else "")
    text += f" + eff {eff / b:.2f}" if b and eff != p else ""
    text += f", {len(r['grouped_layers'])} grouped" if r.get("grouped_layers") else ""
    return text + (f" ({', '.join(rec['failed'])})" if rec.get("failed") else "")


def compare(paths: list[Path]) -> str:
    """One markdown table over several results files: a row per model, a column per file."""
    runs = [json.loads(path.read_text()) for path in paths]
    sizes = [run["settings"]["input_size"] for run in runs]
    keys = list(dict.fromkeys(k for run in runs for k in run["models"]))
    lines = [
        "| model | " + " | ".join(run["tag"] for run in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    for key in keys:
        recs = [run["models"].get(key) for run in runs]
        rec = next(r for r in recs if r)
        name = short_name(rec["spec"]) + (f" @{rec['input_size']}" if rec["input_size"] != sizes[0] else "")
        lines.append(f"| {name} | " + " | ".join(compare_cell(r) for r in recs) + " |")
    passed = [sum(r["outcome"] == "pass" for r in run["models"].values()) for run in runs]
    totals = ", ".join(f"{run['tag']} {n}/{len(run['models'])}" for run, n in zip(runs, passed, strict=True))
    return "\n".join([*lines, "", f"pass: {totals}"]) + "\n"


# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prunekit", default="prunekit", help="prunekit executable (default: prunekit on PATH)")
    p.add_argument(
        "--models", default=None, help="comma-separated model specs (SPEC or SPEC@SIZE); default: the matrix"
    )
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of every group to prune (default 0.5)")
    p.add_argument("--input-size", type=int, default=128, help="input height/width (default 128)")
    p.add_argument("--extra", default="", help='extra flags for check, e.g. --extra "--density 0.5"')
    p.add_argument("--timeout", type=float, default=900, help="seconds per model (default 900)")
    p.add_argument("--tag", default=None, help="results name (default: ratio<R>[-<extra flags>])")
    p.add_argument("--out", default=None, help="results JSON (default bench/results/model_matrix/<tag>.json)")
    p.add_argument("--force", action="store_true", help="re-run models already in the results file")
    p.add_argument(
        "--git-rev",
        default=None,
        help="run prunekit's src/ as of this git revision (e.g. HEAD), not the working tree",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="JSON",
        help="print one table over these results files (a column each) and exit; runs nothing",
    )
    args = p.parse_args(argv)
    if args.compare:
        print(compare([Path(f) for f in args.compare]), end="")
        return 0
    if args.git_rev:  # a frozen copy first on PYTHONPATH shadows the editable install's working tree
        tmp = tempfile.mkdtemp(prefix="model_matrix_src_")
        try:
            commit = snapshot(args.git_rev, tmp)
        except subprocess.CalledProcessError as exc:
            print(
                f"error: cannot extract src/ at {args.git_rev!r}: {_text(exc.stderr).strip()}",
                file=sys.stderr,
            )
            return 2
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [f"{tmp}/src", os.environ.get("PYTHONPATH")]))
        try:
            where = f"src/ of git commit {commit} (git archive, first on PYTHONPATH)"
            return run_matrix(args, {"prunekit_source": where, "git_commit": commit, "git_dirty": []})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return run_matrix(args, {})


def run_matrix(args: argparse.Namespace, source: dict) -> int:
    """The matrix loop; ``source`` overrides the facts about the prunekit source (for ``--git-rev``)."""
    prunekit = shutil.which(args.prunekit)
    if prunekit is None:
        print(
            f"error: prunekit executable {args.prunekit!r} not found: give --prunekit PATH", file=sys.stderr
        )
        return 2
    extra = shlex.split(args.extra)
    tag = args.tag or f"ratio{args.ratio:g}" + "".join("-" + re.sub(r"[^\w.]+", "", e) for e in extra)
    out = Path(args.out or f"bench/results/model_matrix/{tag}.json")
    jobs = [
        split_size(m, args.input_size) for m in (split_models(args.models) if args.models else DEFAULT_MODELS)
    ]
    settings = {"ratio": args.ratio, "input_size": args.input_size, "extra": extra, "git_rev": args.git_rev}

    data = json.loads(out.read_text()) if out.exists() else None
    if data is not None and {k: data["settings"].get(k) for k in SETTINGS_KEYS} != settings:
        if not args.force:
            print(
                f"error: {out} was made with {data['settings']}, not {settings}: "
                "use another --tag / --out, or --force to start it again",
                file=sys.stderr,
            )
            return 2
        data = None
    if data is None:
        data = {"tag": tag, "started": _now(), "models": {}}
    data.setdefault(
        "commands", [data.pop("command")] if "command" in data else []
    )  # older files: one command
    data["commands"].append("python " + shlex.join(["bench/model_matrix.py", *sys.argv[1:]]))
    data.update(
        tag=tag,
        settings=settings,
        environment=environment(prunekit) | source,
    )
    env = data["environment"]
    print(
        f"{prunekit}: torch {env.get('torch')}, torchvision {env.get('torchvision')}, timm {env.get('timm')}"
    )

    total_t0 = time.perf_counter()
    for i, (spec, size) in enumerate(jobs, 1):
        key = spec if size == args.input_size else f"{spec}@{size}"  # results are keyed by SPEC[@SIZE]
        done = data["models"].get(key)
        if done and done["input_size"] == size and not args.force:
            print(f"[{i}/{len(jobs)}] {key}: already in {out} ({done['outcome']}), skipped")
            continue
        print(f"[{i}/{len(jobs)}] {spec} at {size}x{size} ...", flush=True)
        rec = run_one(prunekit, spec, size, args.ratio, extra, args.timeout)
        rec["prunekit_commit"] = env.get("git_commit")
        rec["prunekit_dirty"] = bool(env.get("git_dirty"))
        data["models"][key] = rec
        data["updated"] = _now()
        write_atomic(out, json.dumps(data, indent=2) + "\n")
        what = ", ".join(rec.get("failed", [])) or rec.get("error", "")
        print(
            f"    exit {rec['exit']} in {rec['wall_s']:.1f} s: {rec['outcome']} {_cell(what, 200)}",
            flush=True,
        )

    keys = [spec if size == args.input_size else f"{spec}@{size}" for spec, size in jobs]
    md = markdown(data, [*data["models"], *(k for k in keys if k not in data["models"])])
    write_atomic(out.with_suffix(".md"), md)
    print(
        f"\n{md}\nwrote {out} and {out.with_suffix('.md')} ({time.perf_counter() - total_t0:.0f} s this run)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
