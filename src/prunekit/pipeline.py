"""``prunekit run``: baseline -> method -> finetune -> evaluate -> export -> report, resumable phase by phase.

Run directory layout (all files written atomically)::

    config.yaml         the resolved config (after --set / --smoke)
    state.json          finished phases and their facts; re-running the same command resumes from here
    baseline.pt         baseline weights + spec + input shape (weights_only-loadable)
    plan.json           the chosen Plan (with the model spec: rebuilds the pruned net without pickles)
    model.safetensors   pruned, recovered weights      model.onnx   BN-folded ONNX export
    log.jsonl           training log (one JSON object per epoch / log step)
    report.json  report.md  tradeoff.png  training.png
    ckpt/               per-phase training checkpoints (resume after a kill)
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml

from prunekit.config import RunConfig
from prunekit.cost.budget import Budget, Constraint, MeasuredLatency
from prunekit.cost.latency import interleaved_ort_latency, resolve_round_to
from prunekit.cost.macs import CostModel, count_params
from prunekit.cost.runtimes import machine_signature
from prunekit.data import NO_VAL_FIX, CustomDataBundle, DataBundle, build_data
from prunekit.errors import PrunekitError
from prunekit.export import export_onnx
from prunekit.io import load_state, load_weights, save_checkpoint, save_safetensors, write_json, write_text
from prunekit.methods import get_method
from prunekit.methods.base import MethodContext, MethodResult
from prunekit.models import create_model, parse_spec
from prunekit.report import Report, training_warnings, write_report
from prunekit.runs import BASELINE_FORMAT
from prunekit.space import ChannelSpace, Plan, apply, density_masks
from prunekit.train import (
    SMOKE_DATA,
    TrainConfig,
    barrier,
    broadcast_module,
    check_agreement,
    cleanup,
    fit,
    init_from_env,
    score_metrics,
    smoke_recipe,
)
from prunekit.train.compute import Ledger, use_ledger
from prunekit.train.masking import MaskCallback

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- config helpers
def smoke_config(cfg: RunConfig) -> RunConfig:
    """A copy of ``cfg`` shrunk for a quick end-to-end check: small stratified subsets
    (:data:`prunekit.train.SMOKE_DATA`) and every training phase through :func:`prunekit.train.smoke_recipe`.
    Custom data keeps its config: its loaders are capped to about as many samples when they are built
    (:func:`smoke_samples`)."""
    cfg = cfg.model_copy(deep=True)
    d = cfg.data
    if d.name != "custom":
        for key, cap in SMOKE_DATA.items():
            setattr(d, key, min(getattr(d, key) or 10**9, cap))
    if cfg.baseline.train is not None:
        cfg.baseline.train = smoke_recipe(cfg.baseline.train)
    if cfg.finetune is not None:
        cfg.finetune = smoke_recipe(cfg.finetune)
    return cfg


def smoke_samples(cfg: RunConfig) -> dict[str, int] | None:
    """``--smoke`` with custom data: ``{split: samples}`` (the :data:`~prunekit.train.SMOKE_DATA` caps) that
    :func:`prunekit.data.build_data` caps the user's loaders to; None for the other datasets (subset in the
    config by :func:`smoke_config`)."""
    if cfg.data.name != "custom":
        return None
    return {key.removeprefix("subset_"): cap for key, cap in SMOKE_DATA.items()}


def config_hash(cfg: RunConfig) -> str:
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]


def _stored_config(out_dir: Path) -> RunConfig | None:
    """The run directory's ``config.yaml`` validated by today's schema, or None (missing, unreadable, invalid)."""
    from prunekit.config import parse_config

    try:
        tree = yaml.safe_load((Path(out_dir) / "config.yaml").read_text(encoding="utf-8"))
        return parse_config(tree) if isinstance(tree, dict) else None
    except (OSError, yaml.YAMLError, PrunekitError):
        return None


def same_config(out_dir: Path, stored_hash: str | None, want: str) -> bool:
    """Whether the run in ``out_dir`` (its ``state.json`` hash ``stored_hash``) is of the config hashing to ``want``:
    the hashes agree, or the directory's ``config.yaml`` validates under today's schema to a config that hashes to
    ``want`` (the run was written before a config field was added; the field's default fills the gap, and the
    ``--smoke`` shrinking is already in ``config.yaml``)."""
    if stored_hash == want:
        return True
    stored = _stored_config(out_dir)
    return stored is not None and config_hash(stored) == want


def config_differences(out_dir: Path, cfg: RunConfig, limit: int = 3) -> list[str]:
    """Up to ``limit`` ``"key: stored -> now"`` lines between ``out_dir``'s ``config.yaml`` and ``cfg`` (dotted
    keys); empty when the stored config cannot be read."""
    stored = _stored_config(out_dir)
    if stored is None:
        return []
    old, new = _flat(json.loads(stored.model_dump_json())), _flat(json.loads(cfg.model_dump_json()))
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    lines = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:limit]]
    return lines + ([f"and {len(keys) - limit} more"] if len(keys) > limit else [])


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def resolved_spec(cfg: RunConfig, data: DataBundle | CustomDataBundle) -> str:
    """The model spec with ``num_classes`` / ``in_chans`` taken from the dataset (canonical string)."""
    spec = parse_spec(cfg.model)
    return spec.with_options(num_classes=data.num_classes, in_chans=data.in_chans).to_string()


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class RunResult:
    out_dir: Path
    report: dict


def build_budget(
    cfg: RunConfig, cost: CostModel, model: nn.Module, input_shape: tuple[int, ...]
) -> Budget | None:
    """The run's :class:`Budget` (None without ``target``), checked before anything is written: the method must
    support every constrained metric, and one channel per group must fit (the floor of every plan).

    Raises:
        PrunekitError: an unsupported metric for the method, or a target below the smallest plan.
    """
    target = cfg.target
    if target is None:
        return None
    supported = getattr(get_method(cfg.method.name), "BUDGET_METRICS", ("macs",))
    unsupported = [m for m in target.metrics if m not in supported]
    if unsupported:
        raise PrunekitError(
            f"method {cfg.method.name} cannot prune to a {'/'.join(unsupported)} target (it supports "
            f"{', '.join(supported)}); use uniform or magnitude, or give target.macs_ratio"
        )
    budget = Budget.from_target(target, cost, latency=lambda: _latency_fn(cfg, cost, model, input_shape))
    if "latency_ms" in budget.metrics_constrained:
        # one channel per group is the floor of MACs and params, not of latency: ONNX Runtime runs counts off its
        # channel block unblocked (Fashion-MNIST MobileNetV2 x0.5: 1 channel per group measured at 69% of the
        # unpruned latency, uniform x0.34 rounded to 16 channels at 46%), so one block per group may be faster
        from prunekit.cost.latency import channel_multiple  # looked up per call: the machine's block
        from prunekit.search.fit import min_widths

        if budget.satisfied(min_widths(cost.space, round_to=channel_multiple())):
            return budget
    budget.require_reachable(
        cost.space.channels * 0 + 1, who="prunekit", how="one channel per group", fix="raise the target"
    )
    return budget


def _latency_fn(cfg: RunConfig, cost: CostModel, model: nn.Module, input_shape: tuple[int, ...]):
    """The budget's latency function: the table's predictor when ``target.latency_lut`` names one (its machine
    signature checked against this machine and ``export.latency_threads``), else ONNX Runtime measurements."""
    if cfg.target is not None and cfg.target.latency_lut:
        from prunekit.cost.lut import load_table
        from prunekit.cost.predict import LatencyModel

        table = load_table(cfg.target.latency_lut, runtime="ort", threads=cfg.export.latency_threads)
        return LatencyModel(table, cost.space, batch=1)
    return MeasuredLatency(model, cost.space, input_shape, threads=cfg.export.latency_threads)


class RunState:
    """``state.json`` of a run directory: the config hash, the finished phases and their facts, the resolved budget.

    Re-running the same command resumes from here; a different config in the same directory is refused.
    """

    def __init__(self, path: Path, config_hash: str, cfg: RunConfig | None = None) -> None:
        self.path, self.hash, self.cfg = path, config_hash, cfg
        self.data: dict[str, Any] = {"config_hash": config_hash, "phases": {}}

    def load(self, out_dir: Path, *, overwrite: bool) -> None:
        """Read ``state.json`` (after deleting ``out_dir`` when ``overwrite``). A run written by an older prunekit,
        whose ``config.yaml`` validates to this config under today's schema (a field added since, at its default),
        resumes (:func:`same_config`).

        Raises:
            PrunekitError: the directory holds a run of a different config (the message names up to three of the
                keys that differ).
        """
        if overwrite and out_dir.exists():
            shutil.rmtree(out_dir)
        if self.path.is_file():
            data = json.loads(self.path.read_text())
            if not same_config(out_dir, data.get("config_hash"), self.hash):
                diff = config_differences(out_dir, self.cfg) if self.cfg is not None else []
                raise PrunekitError(
                    f"{out_dir} holds a run of a different config"
                    + (f" ({'; '.join(diff)})" if diff else "")
                    + "; use --out DIR for a new run or --overwrite to replace it"
                )
            data["config_hash"] = self.hash
            self.data = data

    def keep_budget(self, budget: Budget | None) -> Budget | None:
        """The budget a resumed run started with (a latency limit is measured once), else ``budget``, recorded."""
        if budget is None:
            return None
        saved = self.data.get("budget")
        if saved:
            return Budget([Constraint(**c) for c in saved], budget.cost, budget.latency)
        self.data["budget"] = [asdict(c) for c in budget.constraints]
        return budget

    def phase(self, name: str) -> dict | None:
        """The facts of a finished phase, or None."""
        return self.data["phases"].get(name)

    def done(self, name: str, facts: dict, *, write: bool) -> None:
        """Record a finished phase (``write``: rank 0 writes ``state.json`` atomically)."""
        self.data["phases"][name] = facts
        if write:
            self.save()

    def save(self) -> None:
        write_json(self.path, self.data)


class _Run:
    def __init__(self, cfg: RunConfig, out_dir: Path, *, smoke: bool, command: str):
        self.cfg, self.out, self.smoke, self.command = cfg, out_dir, smoke, command
        self.device = cfg.device
        self.wall: dict[str, float] = {}
        self.history: dict[str, list] = {}
        self.state = RunState(out_dir / "state.json", config_hash(cfg), cfg)
        self.ledger = Ledger()  # the run directory's compute.json once the run is opened (_start)

    @property
    def main(self) -> bool:
        return self.dist.rank == 0

    def _done(self, phase: str, facts: dict) -> None:
        self.state.done(phase, facts, write=self.main)

    def _phase(self, phase: str) -> dict | None:
        return self.state.phase(phase)

    # -------------------------------------------------------------- training helpers
    def _fit(self, model: nn.Module, tc: TrainConfig, tag: str, callbacks=(), select="best", loss_fn=None):
        ckpt = self.out / "ckpt" / f"{tag}.ckpt"
        if select == "best" and self.eval_loaders["val"] is None:
            raise PrunekitError(
                f"{tag} training keeps its best epoch on the validation split and this run has none: {NO_VAL_FIX}"
            )
        if loss_fn is not None and self.data.loss_fn is not None:
            raise PrunekitError(
                f"{tag}: the {self.cfg.method.name} method trains with a loss of its own, which cannot combine with "
                "the data factory's loss_fn: drop loss_fn from the factory or pick another method"
            )
        res = fit(
            model,
            self.data.train,
            tc,
            val_loader=self.eval_loaders["val"],
            device=self.device,
            callbacks=callbacks,
            ckpt_path=ckpt,
            resume=ckpt.is_file(),
            log_path=self.out / "log.jsonl",
            desc=tag,
            select=select,
            loss_fn=loss_fn,
            batch_loss=self.data.loss_fn,
            eval_fn=self.data.eval_fn,
        )
        self.history[tag] = res.history
        return res

    def finetune(self, model: nn.Module, epochs: float, *, callbacks=(), tag: str = "finetune"):
        """Recovery training with the run's finetune recipe for ``epochs`` (checkpointed under ``ckpt/<tag>``)."""
        base = self.cfg.finetune or self.cfg.baseline.train or TrainConfig(epochs=1, lr=0.01)
        tc = base.model_copy(update={"epochs": epochs, "warmup_epochs": min(base.warmup_epochs, epochs / 2)})
        return self._fit(model, tc, tag, callbacks=callbacks, select="last")

    def train(
        self, model: nn.Module, tc: TrainConfig, *, tag: str, callbacks=(), select="best", loss_fn=None
    ):
        """Any recipe on the run's data, checkpointed under ``ckpt/<tag>`` (see MethodContext.train)."""
        res = self._fit(model, tc, tag, callbacks=callbacks, select=select, loss_fn=loss_fn)
        if select == "best" and res.best_state is not None:
            model.load_state_dict(res.best_state)
        return res

    def evaluate(self, model: nn.Module, split: str) -> dict:
        """Metrics of ``model`` on ``split``; under torchrun every rank evaluates its shard (all ranks at once:
        the pipeline and the methods call this in step) and the sums are all-reduced. With the data factory's
        ``eval_fn``, its score stands in ``top1`` (:func:`prunekit.train.score_metrics`)."""
        loader = self.eval_loaders["val" if split == "val" else "test"]
        if loader is None:
            raise PrunekitError(f"this run has no validation split: {NO_VAL_FIX}")
        return score_metrics(model, loader, self.device, self.data.eval_fn)

    # -------------------------------------------------------------- phases
    def prepare(self) -> None:
        self.dist = init_from_env(self.cfg.device)  # no-op unless launched by torchrun
        self.device = str(self.dist.device) if self.dist.world_size > 1 else self.cfg.device
        self.data = build_data(
            self.cfg.data,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            max_samples=smoke_samples(self.cfg) if self.smoke else None,
        )
        self.eval_loaders = {s: self.data.eval_loader(s) for s in ("val", "test")}
        self.spec = resolved_spec(self.cfg, self.data)
        self.input_shape = (1, self.data.in_chans, self.data.input_size, self.data.input_size)
        torch.manual_seed(self.cfg.seed)
        self.model = create_model(self.spec)
        self.space = ChannelSpace.build(self.model, self.input_shape)
        self.cost = CostModel(self.space)
        self.base_macs = float(self.cost.cost().macs)
        self.budget = build_budget(self.cfg, self.cost, self.model, self.input_shape)

    @property
    def target_macs(self) -> float | None:
        return None if self.budget is None else self.budget.limit("macs")

    def baseline(self) -> None:
        done = self._phase("baseline")
        path = self.out / "baseline.pt"
        t0 = time.perf_counter()
        if done and path.is_file():
            load_weights(self.model, load_state(path), str(path))
            self.base_metrics = done["metrics"]
            self.history["baseline"] = done.get("history", [])
            self.wall["baseline"] = done["wall_s"]
            return
        bc = self.cfg.baseline
        if bc.checkpoint:
            load_weights(self.model, load_state(bc.checkpoint), bc.checkpoint)
        elif bc.train is not None:
            self._fit(self.model, bc.train, "baseline")
        with self.ledger.in_phase("evaluate"):
            self.base_metrics = self._metrics(self.model)
        if self.main:
            save_checkpoint(
                path,
                {
                    "format": BASELINE_FORMAT,
                    "spec": self.spec,
                    "input_shape": list(self.input_shape),
                    "data": self.cfg.data.model_dump_json(),
                    "state_dict": self.model.state_dict(),
                    "top1": float(self.base_metrics["top1"]),
                },
            )
        self.wall["baseline"] = time.perf_counter() - t0
        self._done(
            "baseline",
            {
                "metrics": self.base_metrics,
                "wall_s": self.wall["baseline"],
                "history": self.history.get("baseline", []),
            },
        )

    def method(self) -> None:
        """The method chooses the plan and returns the pruned model (resumed from ``plan.json`` +
        ``method.safetensors`` when the phase finished before)."""
        done = self._phase("method")
        if done and (self.out / "plan.json").is_file() and (self.out / "method.safetensors").is_file():
            self._resume_method(done)
            return
        t0 = time.perf_counter()
        result = get_method(self.cfg.method.name).run(self._context(), self.cfg.method)
        result.plan.model = result.plan.model or self.spec  # a method may prune another base model (scratch)
        result.plan.input_shape = list(self.input_shape)
        result.plan.meta.update({"method": self.cfg.method.name, "target_macs": self.target_macs})
        self._agree(result)
        self.plan, self.pruned, self.method_result = result.plan, result.model, result
        if self.main:
            self.plan.save(self.out / "plan.json")
            save_safetensors(self.pruned.state_dict(), self.out / "method.safetensors")
        self.wall["method"] = time.perf_counter() - t0
        facts = {"history": result.history, "trained": result.trained, "extra": result.extra}
        self._done("method", {**facts, "wall_s": self.wall["method"]})

    def _agree(self, result: MethodResult) -> None:
        """Under torchrun: every rank must have chosen the same plan (its structure; ``meta`` holds timings), and
        every rank continues from rank 0's weights and BN statistics (float reductions differ across ranks in the
        last bits; BN recalibration may run on each rank's own shard). No-op in one process."""
        if self.dist.world_size == 1:
            return
        structure = json.loads(result.plan.to_json())
        structure.pop("meta", None)
        check_agreement(structure, f"the {self.cfg.method.name} plan")
        broadcast_module(result.model)

    def _context(self) -> MethodContext:
        return MethodContext(
            model=copy.deepcopy(self.model),
            spec=self.spec,
            space=self.space,
            cost=self.cost,
            target_macs=self.target_macs,
            budget=self.budget,
            data=self.data,
            device=self.device,
            out_dir=self.out,
            finetune=self.finetune,
            evaluate=self.evaluate,
            train=self.train,
            baseline_train=self.cfg.baseline.train,
            seed=self.cfg.seed,
            smoke=self.smoke,
            loss_fn=self.data.loss_fn,
            eval_fn=self.data.eval_fn,
        )

    def _resume_method(self, done: dict) -> None:
        self.plan = Plan.load(self.out / "plan.json")
        if self.plan.model in (None, self.spec):
            self.pruned = apply(self.model, self.plan, self.space)
        else:  # the method pruned another base model (scratch: an expanded one); plan.model names it
            self.pruned = apply(create_model(self.plan.model), self.plan)
        load_weights(self.pruned, load_state(self.out / "method.safetensors"), "method.safetensors")
        keys = ("history", "trained", "extra")
        self.method_result = MethodResult(plan=self.plan, model=self.pruned, **{k: done[k] for k in keys})
        self.wall["method"] = done["wall_s"]

    def recover(self) -> None:
        t0 = time.perf_counter()
        if not self.method_result.trained and self.cfg.finetune is not None:
            # sparse layers keep their dropped blocks at zero (masks recovered from the zeros the method left)
            masks = density_masks(self.pruned, self.plan, from_zeros=True)
            callbacks = (MaskCallback(masks),) if masks else ()
            res = self._fit(self.pruned, self.cfg.finetune, "finetune", callbacks=callbacks)
            if res.best_state is not None:
                self.pruned.load_state_dict(res.best_state)
        self.wall["finetune"] = time.perf_counter() - t0

    def export_and_report(self) -> dict:
        """Evaluate the pruned model, save and export it, measure latency, write the report (``report.json`` last)."""
        t0 = time.perf_counter()
        with self.ledger.in_phase("evaluate"):
            pruned_metrics = self._metrics(self.pruned)
        self.wall["evaluate"] = time.perf_counter() - t0
        if not self.main:  # rank 0 saves, exports, times and writes; the others read its report
            barrier()
            return json.loads((self.out / "report.json").read_text(encoding="utf-8"))
        t0 = time.perf_counter()
        files, onnx_info = self._save_and_export()
        lat = self._latencies()
        self.wall["export"] = time.perf_counter() - t0
        report = Report.model_validate(self._report(pruned_metrics, lat, files, onnx_info))
        for w in report.warnings or []:
            log.warning("%s", w.replace("`", ""))
        written = write_report(
            report, self.out
        )  # report.json last: its presence means the report is complete
        report.files = {**(report.files or {}), **{k: Path(v).name for k, v in written.items()}}
        data = report.to_dict()
        write_json(self.out / "report.json", data)
        if self.dist.world_size > 1:
            barrier()
        return data

    def _metrics(self, model: nn.Module) -> dict:
        metrics = self.evaluate(model, "test")
        if self.data.val is not None:
            metrics["val_top1"] = self.evaluate(model, "val")["top1"]
        return metrics

    def _save_and_export(self) -> tuple[dict[str, str], Any]:
        save_safetensors(
            self.pruned.state_dict(),
            self.out / "model.safetensors",
            metadata={"spec": self.spec, "plan": "plan.json"},
        )
        masks = density_masks(self.pruned, self.plan, from_zeros=True)
        if masks:  # the weight masks of sparse layers, beside the weights (runs.load_masks reads them)
            save_safetensors(masks.params, self.out / "masks.safetensors", metadata={"plan": "plan.json"})
        files = {
            "plan": "plan.json",
            "weights": "model.safetensors",
            **({"masks": "masks.safetensors"} if masks else {}),
            "baseline": "baseline.pt",
            "log": "log.jsonl",
            "config": "config.yaml",
        }
        onnx_info = None
        if self.cfg.export.onnx:
            onnx_info = export_onnx(self.pruned, self.out / "model.onnx", self.input_shape)
            files["onnx"] = "model.onnx"
        return files, onnx_info

    def _latencies(self) -> dict[str, dict]:
        """ONNX Runtime latency (ms) of the baseline and the pruned model at batch 1 and ``export.latency_batch``,
        timed in interleaved rounds (median over rounds of each round's median) so that both see the same load;
        ``{"baseline": {}, "pruned": {}}`` when disabled."""
        ec = self.cfg.export
        if not ec.latency:
            return {"baseline": {}, "pruned": {}}
        kw: dict[str, Any] = {
            "batch_sizes": (1, ec.latency_batch),
            "threads": ec.latency_threads,
            "rounds": 2,
        }
        if self.smoke:
            kw.update(warmup=2, repeats=5, max_time_s=1.0, min_time_s=0.05, rounds=1)
        nets = {"baseline": self.model, "pruned": self.pruned}
        times = interleaved_ort_latency([(net, self.input_shape) for net in nets.values()], **kw)
        return {
            key: {
                "latency_ms": statistics.median(t[1]),
                "latency_ms_batch": statistics.median(t[ec.latency_batch]),
                "latency_batch": ec.latency_batch,
                "latency_threads": ec.latency_threads,
            }
            for key, t in zip(nets, times, strict=True)
        }

    def _report(self, pruned_metrics: dict, lat: dict, files: dict, onnx_info: Any) -> dict:
        pruned_cost, base_cost = self.cost.cost(self.plan, per_layer=True), self.cost.cost()
        report = {
            "name": self.cfg.name,
            "command": self.command,
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "smoke": self.smoke,
            "dataset": {
                "name": self.data.name,
                "sizes": self.data.sizes,
                "input_shape": list(self.input_shape),
                "num_classes": self.data.num_classes,
            },
            "model": self.spec,
            "method": {
                "name": self.cfg.method.name,
                "config": self.cfg.method.model_dump(),
                **_resolved(self.cfg.method),
            },
            "target": {
                "macs_ratio": self.cfg.target.macs_ratio if self.cfg.target else None,
                "macs": self.target_macs,
                "achieved_macs_ratio": pruned_cost.macs / base_cost.macs,
            },
            "constraints": self._constraint_rows(lat),
            "baseline": _side(self.base_metrics, base_cost, count_params(self.model), lat["baseline"]),
            "pruned": _side(pruned_metrics, pruned_cost, count_params(self.pruned), lat["pruned"]),
            "score": "eval_fn" if self.data.eval_fn is not None else "top1",
            "machine": machine_signature("ort", self.cfg.export.latency_threads) if lat["pruned"] else None,
            "wall_s": {k: round(v, 2) for k, v in self.wall.items()},
            "compute": self.ledger.summary(self.base_macs, self.data.sizes.get("train", 0)),
            "history": {**self.history, "method": self.method_result.history},
            "groups": [
                {"name": g.name, "channels": g.channels, "kept": int(w), "tags": sorted(g.tags)}
                for g, w in zip(self.space.groups, self.plan.widths(self.space), strict=True)
            ],
            "layers": _layer_rows(self.plan, pruned_cost),
            "extra": {**self.method_result.extra, **({"onnx": onnx_info.to_dict()} if onnx_info else {})},
            "files": files,
        }
        report["wall_s"]["total"] = round(sum(v for k, v in self.wall.items()), 2)
        report["warnings"] = training_warnings(report)
        return report

    def _constraint_rows(self, lat: dict) -> list[dict]:
        """Every constraint of the budget: asked, achieved (latency: the final paired measurement), met."""
        if self.budget is None:
            return []
        if "latency_ms" not in self.budget.metrics_constrained:
            return self.budget.rows(self.plan)
        return self.budget.rows(
            self.plan,
            measured={"latency_ms": lat["pruned"].get("latency_ms")},
            baseline_measured={"latency_ms": lat["baseline"].get("latency_ms")},
        )


def _resolved(method_cfg: Any) -> dict:
    """Config values resolved on this machine (``round_to: auto`` -> the channel multiple), for the report."""
    rt = getattr(method_cfg, "round_to", None)
    if rt is None:
        return {}
    return {"resolved": {"round_to": "lut (latency table)" if rt == "lut" else resolve_round_to(rt)}}


def _side(metrics: dict, cost: Any, nparams: int, latency: dict) -> dict:
    return {
        "top1": metrics["top1"],
        "top5": metrics.get("top5"),
        "val_top1": metrics.get("val_top1"),
        "macs": cost.macs,
        "flops": cost.flops,
        "params": nparams,
        "effective_macs": cost.effective_macs,
        "effective_params": cost.effective_params,
        **latency,
    }


def _layer_rows(plan: Plan, cost: Any) -> list[dict]:
    """Per-layer rows for the report, only for plans with weight-level choices (density, conv groups)."""
    if not plan.layers:
        return []
    rows = {r["name"]: r for r in cost.layers}
    return [
        {
            "name": n,
            "density": lc.density,
            "block": lc.block,
            "conv_groups": lc.conv_groups,
            "macs": rows.get(n, {}).get("macs"),
            "effective_macs": rows.get(n, {}).get("effective_macs"),
        }
        for n, lc in plan.layers.items()
    ]


def _start(cfg: RunConfig, out_dir, *, smoke: bool, overwrite: bool, command: str) -> _Run:
    """Shrink for ``--smoke``, check everything checkable (nothing written on error), then open the run directory."""
    if smoke:
        cfg = smoke_config(cfg)
    out = Path(out_dir) if out_dir else Path("runs") / (f"{cfg.name}-smoke" if smoke else cfg.name)
    r = _Run(cfg, out, smoke=smoke, command=command)
    r.prepare()  # raises before anything is written
    r.state.load(out, overwrite=overwrite and r.main)
    r.budget = r.state.keep_budget(r.budget)
    if r.main:
        ledger = out / "compute.json"  # the run's compute ledger (a fresh run starts a fresh one)
        if not r.state.data["phases"]:
            ledger.unlink(missing_ok=True)
        r.ledger = Ledger(ledger)
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False))
        r.state.save()
    barrier()
    return r


def run(
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    *,
    smoke: bool = False,
    overwrite: bool = False,
    command: str = "",
) -> RunResult:
    """Run the whole pipeline for ``cfg`` into ``out_dir`` (default ``runs/<name>``, ``runs/<name>-smoke``).

    Everything that can be checked before writing (config, dataset, model spec, reachability of the target) is
    checked first: a user error leaves no output directory behind. Re-running the same command resumes.

    Under torchrun (``torchrun --nproc_per_node N -m prunekit.cli run ...``) every phase runs on every rank: the
    training loops are data-parallel (DDP over each rank's shard of the train split, ``data.batch_size`` per rank),
    searches shard their evaluations, every rank must reach the same plan (checked; a rank that diverged stops the
    run with one line) and continues from rank 0's weights; rank 0 writes the run directory, exports and times.

    Raises:
        PrunekitError: bad input (one line), a different config already in ``out_dir``, or ranks that disagree on
            the plan.
    """
    r = _start(cfg, out_dir, smoke=smoke, overwrite=overwrite, command=command)
    try:
        with use_ledger(r.ledger):
            with r.ledger.in_phase("baseline"):
                r.baseline()
            with r.ledger.in_phase("method"):
                r.method()
            with r.ledger.in_phase("finetune"):
                r.recover()
            report = r.export_and_report()
        r._done("report", {"pruned_top1": report["pruned"]["top1"]})
    finally:
        cleanup()
    return RunResult(r.out, report)


def train_only(
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    *,
    smoke: bool = False,
    overwrite: bool = False,
    command: str = "",
) -> RunResult:
    """``prunekit train``: only the baseline phase (writes ``baseline.pt`` and ``state.json``); under torchrun it
    trains with DDP and rank 0 writes."""
    r = _start(cfg, out_dir, smoke=smoke, overwrite=overwrite, command=command)
    with use_ledger(r.ledger), r.ledger.in_phase("baseline"):
        r.baseline()
    cleanup()
    return RunResult(r.out, {"baseline": r.base_metrics, "wall_s": r.wall})
