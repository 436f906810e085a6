"""Run configuration: one YAML file per experiment, validated with pydantic.

Sections (every key is checked; unknown keys are errors)::

    name: quickstart                 # run name (default: the file's stem); output goes to runs/<name>
    model: resnet20                  # model spec; num_classes / in_chans are filled in from the dataset
    seed: 0
    device: cpu                      # or cuda / cuda:1
    data: {name: fashion_mnist, ...}             # prunekit.data.DataConfig
    baseline: {checkpoint: null, train: {...}}   # load a trained baseline, or train one with this recipe
    target: {macs_ratio: 0.5}                    # budget: macs / params / latency_ms, absolute or *_ratio, several at once
    method: {name: magnitude, ...}               # one of prunekit.methods.METHODS, with its own options
    finetune: {epochs: 2, lr: 0.01, ...}         # prunekit.train.TrainConfig for recovery (null: no finetune)
    export: {onnx: true, latency: true, ...}

``--set dotted.key=value`` overrides any key (values parsed as YAML scalars). ``--smoke`` shrinks data and epochs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prunekit.cost.budget import TargetConfig
from prunekit.data import DataConfig
from prunekit.errors import PrunekitError, validation_message
from prunekit.methods import method_config_classes, method_config_union
from prunekit.train import TrainConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BaselineConfig(_Strict):
    """Where the unpruned network comes from: ``checkpoint`` (a prunekit ``baseline.pt`` or a plain state_dict
    saved with torch.save / safetensors) or training with ``train``. ``train: null`` keeps the random initialisation
    (methods that train from scratch)."""

    checkpoint: str | None = None
    train: TrainConfig | None = None


class ExportConfig(_Strict):
    """Deployment artefacts and measurements. Latency: ONNX Runtime, ``latency_threads`` threads, median of
    repeated runs at batch 1 and at ``latency_batch``."""

    onnx: bool = True
    latency: bool = True
    latency_threads: int = Field(default=1, ge=1)
    latency_batch: int = Field(default=64, ge=1)


MethodConfig = method_config_union()


class RunConfig(_Strict):
    name: str | None = None
    model: str
    seed: int = 0
    device: str = "cpu"
    data: DataConfig
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    target: TargetConfig | None = None  # budget methods require it; multistage uses its ratio schedule
    method: MethodConfig
    finetune: TrainConfig | None = None
    export: ExportConfig = Field(default_factory=ExportConfig)


def _set_dotted(tree: dict, dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise PrunekitError(f"--set {dotted}={raw}: empty key segment")
    node = tree
    for k in keys[:-1]:
        if node.get(k) is None:
            node[k] = {}
        if not isinstance(node[k], dict):
            raise PrunekitError(f"--set {dotted}: {k!r} is not a section")
        node = node[k]
    try:
        node[keys[-1]] = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        node[keys[-1]] = raw


def _method_tags() -> set[str]:
    """The discriminator tags of the method union (pydantic puts them in error locations: method.<tag>.key)."""
    return {get_args(c.model_fields["name"].annotation)[0] for c in method_config_classes()}


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read, override and validate a run config.

    Raises:
        PrunekitError: missing/unreadable file, invalid YAML, a malformed ``--set``, or a validation error (the
            message names the key).
    """
    path = Path(path)
    if not path.is_file():
        raise PrunekitError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise PrunekitError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(tree, dict):
        raise PrunekitError(f"{path}: the top level must be a mapping of sections")
    for item in overrides:
        if "=" not in item:
            raise PrunekitError(f"--set expects dotted.key=value, got {item!r}")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), raw.strip())
    tree.setdefault("name", path.stem)
    return parse_config(tree)


def parse_config(tree: dict[str, Any]) -> RunConfig:
    """Validate a config tree (already loaded).

    Raises:
        PrunekitError: the first invalid key, one line, e.g. ``invalid config: unknown key 'data.batchsize' (check
            the spelling; see the config reference in README.md)``.
    """
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise PrunekitError(validation_message(exc, what="config", drop=_method_tags())) from None
