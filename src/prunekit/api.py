"""prunekit from Python: one call to prune a model in the user's own code, and a pickle-free save / restore.

::

    import prunekit

    pruned, plan = prunekit.prune(model, torch.randn(1, 3, 32, 32), method="magnitude",
                                  target={"macs_ratio": 0.5}, train_loader=train, val_loader=val,
                                  finetune={"epochs": 3, "lr": 0.01})
    prunekit.save("pruned.safetensors", pruned, plan)
    again = prunekit.restore("pruned.safetensors", build_model)   # a fresh original architecture

:func:`prune` runs one of the methods of ``prunekit run`` (the same pydantic method configs the YAML uses, as
keyword options) on the user's model, example input and loaders, without a run directory of its own (checkpoints go
to ``out_dir``, a temporary directory by default). Methods that need no training (``uniform``, ``magnitude``,
``gconv`` without finetuning) need only the model and the example input; the others train on ``train_loader``
(validation on ``val_loader``) with the recipes given as options. ``loss_fn(model, batch) -> loss`` replaces
cross-entropy on ``(x, y)`` batches and ``eval_fn(model, loader) -> score`` (higher is better) replaces top-1, so a
segmentation, detection or regression model prunes with its own objective: in every training (REGULAR, finetune,
recovery, JCW's supernet, MetaPruning's PruningNet), every best-epoch choice, JCW's proxy loss, MetaPruning's
fitness and GConv's Taylor criterion. BN recalibration (JCW, MetaPruning) feeds the first element of a batch to the
model.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn as nn
from pydantic import ValidationError

from prunekit.cost.budget import Budget, MeasuredLatency, TargetConfig
from prunekit.cost.macs import CostModel
from prunekit.errors import PrunekitError, validation_message
from prunekit.io import load_safetensors, load_weights, save_safetensors
from prunekit.methods import get_method, parse_method_config
from prunekit.methods.base import MethodContext
from prunekit.space import ChannelSpace, Plan, apply, density_masks
from prunekit.train import TrainConfig, fit, score_metrics
from prunekit.train.masking import MaskCallback

__all__ = ["SAVE_FORMAT", "prune", "restore", "save"]

SAVE_FORMAT = "prunekit.pruned/1"
"""``metadata["format"]`` of a :func:`save` file."""

_TRAINING_METHODS = ("multistage", "scratch", "metapruning", "jcw", "plan")

LossFn = Callable[[nn.Module, Any], torch.Tensor]
EvalFn = Callable[[nn.Module, Iterable[Any]], float]


def prune(
    model: nn.Module,
    example_inputs: Any,
    method: str = "magnitude",
    target: Mapping[str, Any] | None = None,
    *,
    train_loader: Iterable[Any] | None = None,
    val_loader: Iterable[Any] | None = None,
    test_loader: Iterable[Any] | None = None,
    loss_fn: LossFn | None = None,
    eval_fn: EvalFn | None = None,
    output_transform: Callable[[Any], torch.Tensor] | None = None,
    finetune: Mapping[str, Any] | TrainConfig | None = None,
    spec: str | None = None,
    device: str = "cpu",
    seed: int = 0,
    out_dir: str | Path | None = None,
    latency_threads: int = 1,
    **options: Any,
) -> tuple[nn.Module, Plan]:
    """Prune ``model`` with ``method`` to ``target`` and return ``(pruned_model, plan)``.

    Args:
        model: the trained network (not modified). Its outputs -- logits, segmentation maps, every tensor of a
            tuple / dict output -- are never pruned.
        example_inputs: one input batch: a tensor ``(N, C, H, W)``, a tuple of tensors (positional ``forward``
            arguments) or a dict (keyword arguments). Latency targets and ONNX export need a single tensor.
        method: a ``prunekit run`` method name (``uniform``, ``magnitude``, ``multistage``, ``scratch``,
            ``metapruning``, ``jcw``, ``gconv``, ``plan``); ``**options`` are its config fields (README, "Methods"),
            e.g. ``round_to=16`` or ``groups=2``.
        target: the budget, as the YAML ``target:`` section: ``{"macs_ratio": 0.5}``, ``{"params": 1_000_000}``,
            ``{"latency_ratio": 0.5}`` (measured with ONNX Runtime on this machine, batch 1, ``latency_threads``
            threads; or predicted with ``latency_lut``). Required by the budget methods.
        train_loader, val_loader, test_loader: the user's loaders (any iterable with ``len()``); needed by the
            methods that train. ``val_loader`` is where best epochs are chosen; ``test_loader`` defaults to it.
        loss_fn: ``loss_fn(model, batch) -> scalar loss`` on a whole batch (default: cross-entropy on ``(x, y)``).
        eval_fn: ``eval_fn(model, loader) -> float`` (higher is better; the model in eval mode, no grad) replacing
            top-1 wherever a method compares models.
        output_transform: for a model returning a tuple / dict: ``output_transform(outputs) -> logits (N, C)``, the
            tensor the default cross-entropy and top-1 use (e.g. ``lambda out: out["out"]``); unused by a custom
            ``loss_fn`` / ``eval_fn``.
        finetune: the recovery recipe after pruning (``TrainConfig`` fields: ``{"epochs": 3, "lr": 0.01}``) for the
            methods that do not train their result themselves; None = no recovery training.
        spec: the model's prunekit spec (``resnet20``, ``path/to/file.py:build``), when it has one: methods that
            rebuild a fresh or a wider copy (``scratch``) need it; otherwise fresh copies are re-initialised.
        device: ``cpu`` / ``cuda``. seed: seeds the method and the training. out_dir: checkpoints and method state
            (a temporary directory, removed afterwards, when None).

    Returns:
        ``(pruned, plan)``: the physically smaller model (in eval mode, on CPU) and its
        :class:`~prunekit.space.Plan` (save both with :func:`save`).

    Raises:
        PrunekitError: an unknown method or option, a target the method cannot take, a method that trains called
            without ``train_loader``, a model that cannot be traced on ``example_inputs``, or any error of the method itself -- one line each.
    """
    cfg = parse_method_config({"name": method, **options})
    if output_transform is not None:
        loss_fn = loss_fn or _transformed_loss(output_transform)
        eval_fn = eval_fn or _transformed_top1(output_transform)
    if cfg.name in _TRAINING_METHODS and (train_loader is None or val_loader is None):
        raise PrunekitError(
            f"method {cfg.name} trains and selects on validation data: pass train_loader= and val_loader= to "
            "prunekit.prune"
        )
    if not isinstance(model, nn.Module):
        raise PrunekitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    base = copy.deepcopy(model).cpu().eval()
    space = ChannelSpace.build(base, example_inputs)
    cost = CostModel(space)
    budget = _budget(target, cost, base, space, latency_threads)
    recipe = _recipe(finetune)
    with tempfile.TemporaryDirectory(prefix="prunekit-") as tmp:
        out = Path(out_dir) if out_dir is not None else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        loop = _Loop(train_loader, val_loader, test_loader or val_loader, loss_fn, eval_fn, device, out, seed)
        ctx = MethodContext(
            model=base,
            spec=spec or f"python:{type(model).__qualname__}",
            space=space,
            cost=cost,
            target_macs=None if budget is None else budget.limit("macs"),
            budget=budget,
            data=SimpleNamespace(train=train_loader, val=val_loader, test=test_loader or val_loader),
            device=device,
            out_dir=out,
            finetune=lambda m, epochs, *, callbacks=(), tag="finetune": loop.fit(
                m,
                (recipe or TrainConfig(epochs=1, lr=0.01)).model_copy(update={"epochs": epochs}),
                tag,
                callbacks=callbacks,
                select="last",
            ),
            evaluate=loop.evaluate,
            train=loop.train,
            baseline_train=recipe,
            seed=seed,
            loss_fn=loss_fn,
            eval_fn=eval_fn,
        )
        result = get_method(cfg.name).run(ctx, cfg)
        pruned, plan = result.model, result.plan
        plan.model = plan.model or ctx.spec
        plan.input_shape = list(space.input_shape)
        plan.meta.update({"method": cfg.name})
        if not result.trained and recipe is not None:
            masks = density_masks(pruned, plan, from_zeros=True)
            loop.fit(pruned, recipe, "finetune", callbacks=(MaskCallback(masks),) if masks else ())
    return pruned.cpu().eval(), plan


def _transformed_loss(transform: Callable[[Any], torch.Tensor]) -> LossFn:
    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch[0], batch[1]
        return nn.functional.cross_entropy(transform(model(x)), y)

    return loss


def _transformed_top1(transform: Callable[[Any], torch.Tensor]) -> EvalFn:
    def top1(model: nn.Module, loader: Iterable[Any]) -> float:
        device = next(model.parameters()).device
        right = seen = 0
        for batch in loader:
            x, y = batch[0].to(device), batch[1].to(device)
            right += int((transform(model(x)).argmax(1) == y).sum())
            seen += len(y)
        return right / max(seen, 1)

    return top1


def _budget(
    target: Mapping[str, Any] | None, cost: CostModel, model: nn.Module, space: ChannelSpace, threads: int
) -> Budget | None:
    if target is None:
        return None
    try:
        tc = TargetConfig.model_validate(dict(target))
    except ValidationError as exc:
        raise PrunekitError(validation_message(exc, what="target", reference=None)) from None

    def latency():
        if space.example_inputs is not None:
            raise PrunekitError("a latency target needs a model with one tensor input (ONNX Runtime timing)")
        if tc.latency_lut:
            from prunekit.cost.lut import load_table
            from prunekit.cost.predict import LatencyModel

            return LatencyModel(load_table(tc.latency_lut, runtime="ort", threads=threads), space, batch=1)
        return MeasuredLatency(model, space, space.input_shape, threads=threads)

    return Budget.from_target(tc, cost, latency=latency)


def _recipe(finetune: Mapping[str, Any] | TrainConfig | None) -> TrainConfig | None:
    if finetune is None or isinstance(finetune, TrainConfig):
        return finetune
    try:
        return TrainConfig.model_validate(dict(finetune))
    except ValidationError as exc:
        raise PrunekitError(validation_message(exc, what="finetune recipe", reference=None)) from None


class _Loop:
    """The user's loaders and objective behind the method context's ``train`` / ``finetune`` / ``evaluate``."""

    def __init__(self, train, val, test, loss_fn, eval_fn, device, out: Path, seed: int) -> None:
        self.loaders = {"train": train, "val": val, "test": test}
        self.loss_fn, self.eval_fn, self.device, self.out, self.seed = loss_fn, eval_fn, device, out, seed

    def fit(self, model: nn.Module, tc: TrainConfig, tag: str, *, callbacks=(), select="last"):
        if self.loaders["train"] is None:
            raise PrunekitError(
                f"this method trains ({tag}): pass train_loader= (and val_loader=) to prunekit.prune"
            )
        val = self.loaders["val"]
        if select == "best" and val is None:
            raise PrunekitError(
                f"{tag} keeps its best epoch on validation data: pass val_loader= to prunekit.prune"
            )
        ckpt = self.out / "ckpt" / f"{tag}.ckpt"
        return fit(
            model,
            self.loaders["train"],
            tc,
            val_loader=val,
            device=self.device,
            callbacks=callbacks,
            ckpt_path=ckpt,
            resume=ckpt.is_file(),
            desc=tag,
            select=select,
            batch_loss=self.loss_fn,
            eval_fn=self.eval_fn,
        )

    def train(
        self, model: nn.Module, tc: TrainConfig, *, tag: str, callbacks=(), select="best", loss_fn=None
    ):
        if loss_fn is not None and self.loss_fn is not None:
            raise PrunekitError(f"{tag}: the method brings its own loss; it cannot combine with loss_fn")
        res = self.fit(model, tc, tag, callbacks=callbacks, select=select)
        if select == "best" and res.best_state is not None:
            model.load_state_dict(res.best_state)
        return res

    def evaluate(self, model: nn.Module, split: str) -> dict:
        loader = self.loaders["val" if split == "val" else "test"]
        if loader is None:
            raise PrunekitError(f"this method evaluates on {split}: pass val_loader= to prunekit.prune")
        return score_metrics(model, loader, self.device, self.eval_fn)


# ---------------------------------------------------------------------------------------------- save / restore
def save(path: str | Path, model: nn.Module, plan: Plan) -> Path:
    """Write ``model``'s weights and ``plan`` to one ``.safetensors`` file (the plan as JSON in its metadata; no
    pickles), atomically. Returns the path.

    Raises:
        PrunekitError: ``model`` does not have the plan's architecture is found only by :func:`restore`.
    """
    path = Path(path)
    save_safetensors(
        model.state_dict(), path, metadata={"format": SAVE_FORMAT, "plan": plan.model_dump_json()}
    )
    return path


def restore(
    path: str | Path,
    model: nn.Module | Callable[[], nn.Module] | str,
    example_inputs: Any = None,
) -> nn.Module:
    """The pruned model of a :func:`save` file, rebuilt on a fresh copy of the original architecture.

    Args:
        path: the ``.safetensors`` file.
        model: the *unpruned* architecture: a module (copied, not modified), a zero-argument factory, or a prunekit
            model spec string.
        example_inputs: as :func:`prune` took them, for models with several inputs (default: a random tensor of
            the plan's input shape).

    Returns:
        the pruned model with the saved weights, in eval mode (identical outputs to the saved one).

    Raises:
        PrunekitError: a missing or corrupt file, a file that is not a :func:`save` file, or weights that do not
            fit the architecture the plan gives on ``model``.
    """
    path = Path(path)
    if not path.is_file():
        raise PrunekitError(f"pruned model file not found: {path}")
    state, meta = load_safetensors(path)
    if meta.get("format") != SAVE_FORMAT or "plan" not in meta:
        raise PrunekitError(f"{path} is not a prunekit.save file (no {SAVE_FORMAT} plan in its metadata)")
    plan = Plan.model_validate(json.loads(meta["plan"]))
    if isinstance(model, str):
        from prunekit.models import create_model

        base = create_model(model)
    elif isinstance(model, nn.Module):
        base = copy.deepcopy(model)
    elif callable(model):
        base = model()
    else:
        raise PrunekitError(f"model must be a module, a factory or a spec string, got {type(model).__name__}")
    base = base.cpu().eval()
    space = ChannelSpace.build(
        base, example_inputs if example_inputs is not None else tuple(plan.input_shape)
    )
    net = apply(base, plan, space)
    load_weights(net, state, str(path))
    return net.eval()
