"""The typed end-of-run report: :class:`Report` and its sections (what ``report.json`` holds).

Units, everywhere: accuracies (``top1``, ``top5``, ``val_top1``) are fractions in [0, 1]; MACs are
multiply-accumulates of conv and linear layers for one input sample (FLOPs = 2 x MACs, see
:mod:`prunekit.cost.macs`); latency is milliseconds per forward pass of one batch (batch 1 unless the field says
otherwise); wall-clock times are seconds.

Every field is optional, so a run without latency, history or groups is still a valid report. The top level
forbids unknown keys (a typo is an error); the sections accept extra keys (kept in ``report.json``); history,
``extra``, ``files`` and the method config are free-form. Numpy scalars and arrays, tensors and paths are converted
to plain Python values on validation.

Raises (on construction, :meth:`Report.model_validate` or attribute assignment):
    pydantic.ValidationError: a value of the wrong type or out of range (e.g. ``top1="abc"``, ``top1=91.2``), or an
        unknown top-level key; the message names the field path (``pruned.top1``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from prunekit.report._data import _jsonable, _met, _plain

Number = int | float
"""An int stays an int (MAC and parameter counts), a float stays a float."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _plain_values(cls, data: Any) -> Any:
        return _plain(data)


class DatasetInfo(_Model):
    """The dataset the run trained and evaluated on."""

    name: str | None = Field(None, description="Dataset name, e.g. 'fashion_mnist'.")
    sizes: dict[str, int | None] | None = Field(
        None, description="Samples per split, e.g. {'train': 54000, 'val': 6000, 'test': 10000}."
    )
    input_shape: list[int] | None = Field(
        None, description="Model input shape N x C x H x W used for cost and latency (N = 1)."
    )
    num_classes: int | None = Field(None, ge=1, description="Number of classes.")


class MethodInfo(_Model):
    """The pruning method and its configuration."""

    name: str | None = Field(None, description="Method name, e.g. 'magnitude'.")
    config: dict[str, Any] | None = Field(None, description="The method's config, free-form.")
    resolved: dict[str, Any] | None = Field(
        None, description="Config values resolved on this machine, e.g. round_to 'auto' -> 16."
    )


class Target(_Model):
    """The MACs target the method was asked to reach (an upper bound)."""

    macs_ratio: float | None = Field(None, ge=0, description="Asked MACs as a fraction of the baseline's.")
    macs: Number | None = Field(None, ge=0, description="Asked MACs per sample (absolute).")
    achieved_macs_ratio: float | None = Field(
        None, ge=0, description="Pruned MACs as a fraction of the baseline's."
    )


class Side(_Model):
    """Accuracy and cost of one model (the baseline or the pruned one)."""

    top1: float | None = Field(None, ge=0, le=1, description="Top-1 accuracy on the test split, fraction.")
    top5: float | None = Field(None, ge=0, le=1, description="Top-5 accuracy on the test split, fraction.")
    val_top1: float | None = Field(
        None, ge=0, le=1, description="Top-1 accuracy on the validation split, fraction."
    )
    macs: Number | None = Field(None, ge=0, description="MACs per sample (conv + linear; FLOPs = 2 x MACs).")
    flops: Number | None = Field(None, ge=0, description="FLOPs per sample (2 x MACs).")
    params: int | None = Field(None, ge=0, description="Parameter count.")
    latency_ms: float | None = Field(
        None, ge=0, description="Measured ONNX Runtime latency at batch 1, ms per forward pass (median)."
    )
    latency_ms_batch: float | None = Field(
        None, ge=0, description="Measured latency at batch `latency_batch`, ms per forward pass of the batch."
    )
    latency_batch: int | None = Field(None, ge=1, description="Batch size of `latency_ms_batch`.")
    latency_threads: int | None = Field(None, ge=1, description="CPU threads used to measure latency.")
    effective_macs: Number | None = Field(
        None,
        ge=0,
        description="MACs per sample counting only weights that remain (sparsity-aware); = macs when dense.",
    )
    effective_params: int | None = Field(
        None, ge=0, description="Parameters that remain non-zero (sparsity-aware); = params when dense."
    )
    predicted_latency_ms: float | None = Field(
        None, ge=0, description="Batch-1 latency predicted by a latency model (not measured), ms."
    )


class ScoredSide(Side):
    """A :class:`Side` whose ``top1`` / ``val_top1`` hold the data factory's ``eval_fn`` score (``score:
    eval_fn``): any finite number, higher is better; ``top5`` is not measured."""

    top1: float | None = Field(None, description="The eval_fn score on the test split (higher is better).")
    val_top1: float | None = Field(
        None, description="The eval_fn score on the validation split (higher is better)."
    )


class GroupRow(_Model):
    """One channel group of the pruned network: its width before and after pruning."""

    name: str | None = Field(None, description="Group name (its root layer), e.g. 'layer1.0.conv1'.")
    channels: int | None = Field(None, ge=0, description="Channels before pruning.")
    kept: int | None = Field(None, ge=0, description="Channels kept.")
    tags: list[str] | None = Field(None, description="Structural tags, e.g. ['first', 'residual'].")


class LayerRow(_Model):
    """One layer of the pruned network: its density, structure and cost."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Layer (module) name, e.g. 'layer1.0.conv1'.")
    density: float | None = Field(
        None, ge=0, le=1, description="Fraction of the layer's weights kept (non-zero)."
    )
    block: tuple[int, int] | None = Field(
        None,
        description="Block shape (out_channels, in_positions) of the weight sparsity pattern; None: unstructured.",
    )
    conv_groups: int | None = Field(
        None, ge=1, description="The conv's `groups` (1: dense conv; = channels: depthwise)."
    )
    macs: Number | None = Field(None, ge=0, description="MACs per sample of this layer.")
    effective_macs: Number | None = Field(
        None, ge=0, description="MACs per sample counting only kept weights (sparsity-aware)."
    )


ConstraintMetric = Literal["macs", "params", "latency_ms"]
ConstraintSource = Literal["analytic", "measured", "predicted"]


class Constraint(_Model):
    """One budget the pruned model must stay within: ``achieved <= asked``.

    Units follow the metric: ``macs`` MACs per sample, ``params`` a parameter count, ``latency_ms`` ms per forward
    pass at batch 1. When ``met`` is not given but ``asked`` and ``achieved`` are numbers, it is derived as
    ``achieved <= asked`` (relative tolerance 1e-9).
    """

    model_config = ConfigDict(extra="forbid")

    metric: ConstraintMetric = Field(description="What is bounded: 'macs', 'params' or 'latency_ms'.")
    asked: float = Field(ge=0, description="The upper bound, in the metric's unit (absolute, not a ratio).")
    achieved: float | None = Field(None, description="The pruned model's value, in the metric's unit.")
    achieved_ratio: float | None = Field(
        None,
        ge=0,
        description="`achieved` as a fraction of the baseline's value obtained the same way (a measured latency: "
        "the baseline measured back to back with the pruned model).",
    )
    met: bool | None = Field(
        None, description="achieved_ratio <= ratio_of_baseline for a ratio target, else achieved <= asked."
    )
    ratio_of_baseline: float | None = Field(
        None, ge=0, description="`asked` as a fraction of the baseline's value, when the user gave a ratio."
    )
    source: ConstraintSource = Field(
        description="How `achieved` was obtained: 'analytic' (counted), 'measured' or 'predicted' (latency model)."
    )
    predicted: float | None = Field(
        None,
        ge=0,
        description="The latency table's prediction for the pruned model (what the search constrained), when "
        "`achieved` was measured.",
    )

    @model_validator(mode="before")
    @classmethod
    def _derive_met(cls, data: Any) -> Any:
        data = _plain(data)
        if isinstance(data, dict) and data.get("met") is None:
            met = _met(data.get("asked"), data.get("achieved"))
            if met is not None:
                data = {**data, "met": met}
        return data


class Report(_Model):
    """The whole end-of-run report (``report.json``); see the module docstring for units and errors.

    Build it from keyword arguments or validate the pipeline's dict with ``Report.model_validate(d)``;
    :meth:`to_dict` gives what ``report.json`` holds.
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _scored_sides(cls, data: Any) -> Any:
        """``score: eval_fn``: the sides' top1 / val_top1 are the user's score (any scale), not fractions."""
        data = _plain(data)
        if isinstance(data, dict) and data.get("score") == "eval_fn":
            data = {
                **data,
                **{
                    k: ScoredSide.model_validate(data[k])
                    for k in ("baseline", "pruned")
                    if isinstance(data.get(k), dict)
                },
            }
        return data

    name: str | None = Field(None, description="Run name.")
    command: str | None = Field(None, description="The command line that produced the run.")
    created: str | None = Field(
        None, description="When the report was built, UTC, ISO 8601 (YYYY-MM-DDTHH:MM:SSZ)."
    )
    smoke: bool | None = Field(None, description="True for a --smoke run (shrunk data and epochs).")
    dataset: DatasetInfo | str | None = Field(None, description="The dataset (a bare name is accepted).")
    model: str | None = Field(None, description="Model spec, e.g. 'resnet20:in_chans=1,num_classes=10'.")
    method: MethodInfo | str | None = Field(None, description="The method (a bare name is accepted).")
    target: Target | None = Field(None, description="The MACs target.")
    constraints: list[Constraint] = Field(default_factory=list, description="Budgets asked vs achieved.")
    baseline: Side | None = Field(None, description="The unpruned model.")
    pruned: Side | None = Field(None, description="The pruned (and fine-tuned) model.")
    score: Literal["top1", "eval_fn"] = Field(
        "top1",
        description="What the top1 / val_top1 fields hold: top-1 (a fraction), or the score of the data factory's "
        "eval_fn (higher is better; any scale).",
    )
    machine: dict[str, Any] | None = Field(
        None,
        description="Where the latencies were measured (prunekit.cost.runtimes.machine_signature): runtime, "
        "version, threads, cpu (model name), isa; None when latency was not measured.",
    )
    wall_s: dict[str, Number] | None = Field(
        None, description="Wall-clock seconds per phase, plus 'total' (seconds)."
    )
    compute: dict[str, Any] | None = Field(
        None,
        description="Training compute per phase (prunekit.train.compute.Ledger.summary): train / forward / total "
        "MACs and reference epochs (one training epoch of the unpruned model = train images x 3 x its MACs); "
        "'evaluate' (the run's own test / val measurements) is listed but not in the total.",
    )
    history: dict[str, Any] | None = Field(
        None,
        description="Free-form rows per phase: {'baseline': [{'epoch', 'train_loss', 'val_top1', ...}], "
        "'method': [...], ...}; accuracies as fractions, losses in nats.",
    )
    groups: list[GroupRow] | None = Field(None, description="Width of every channel group.")
    layers: list[LayerRow] = Field(default_factory=list, description="Per-layer density, structure and MACs.")
    extra: dict[str, Any] | None = Field(
        None, description="Free-form method facts; 'points' is a list of {label, macs, top1, latency_ms}."
    )
    files: dict[str, str] | None = Field(
        None, description="Output files by kind, relative to the run directory."
    )
    warnings: list[str] | None = Field(None, description="Training warnings (markdown sentences).")

    def to_dict(self) -> dict[str, Any]:
        """What ``report.json`` holds: strictly valid JSON values (NaN and infinities become None).

        Holds every field that was given (explicit ``None`` values included) or that differs from its default
        (e.g. ``constraints`` appended to in place); an unset field is left out, so validating a dict and
        calling ``to_dict`` gives the same keys back.
        """
        data = self.model_dump(exclude_unset=True)
        for key in ("constraints", "layers"):
            rows = getattr(self, key)
            if rows and key not in data:
                data[key] = [r.model_dump(exclude_unset=True) for r in rows]
        return _jsonable({k: data[k] for k in type(self).model_fields if k in data})  # field order
