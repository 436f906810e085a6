"""Which group counts each conv may take, and the per-layer group choices of GConv (arXiv 1811.09341, §3.3).

A dense conv with ``C`` kept input and ``F`` kept output channels can become a ``G``-group conv for every common
divisor ``G`` of ``C`` and ``F`` (:func:`~prunekit.space.plan.legal_conv_groups`). The seed (``gumi``) narrows that
list per layer: at most ``max_groups`` (64), not ``G = C`` (one input channel per group, "depthwise") unless
``allow_depthwise``, and no ``G`` leaving fewer than ``min_factor`` channels per group (``min(C, F) / G``).

Group choices: one ``G`` for every layer (the seed's ``-g``: a layer where it is not legal stays dense, and the
report says why), the group count giving at most ``mcpg`` input channels per group (``--mcpg``), a per-layer table
(``--group-cfg``: :func:`read_group_config` reads the seed's JSON), or the ``MAX_COST`` local search
(:mod:`prunekit.methods.gconv.search`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prunekit.errors import PrunekitError
from prunekit.space.plan import legal_conv_groups


@dataclass(frozen=True)
class GroupRules:
    """The seed's limits on a layer's group count (``--max-groups``, ``--allow-depthwise``, ``--min-factor``)."""

    max_groups: int = 64
    allow_depthwise: bool = False
    min_factor: int = 1

    def candidates(self, c_in: int, c_out: int) -> list[int]:
        """Legal group counts of a dense conv with ``c_in`` x ``c_out`` kept channels, ascending (always 1)."""
        out = []
        for g in legal_conv_groups(c_in, c_out):
            if g > self.max_groups or min(c_in, c_out) // g < self.min_factor:
                continue
            if g == c_in and g > 1 and not self.allow_depthwise:
                continue
            out.append(g)
        return out or [1]


def uniform_choice(candidates: Mapping[str, list[int]], groups: int) -> tuple[dict[str, int], dict[str, str]]:
    """``groups`` for every layer where it is a candidate; ``(choice, skipped {layer: why})``."""
    choice, skipped = {}, {}
    for name, cands in candidates.items():
        if groups in cands:
            choice[name] = groups
        else:
            skipped[name] = f"G={groups} is not legal here (candidates {cands})"
    return choice, skipped


def mcpg_choice(
    candidates: Mapping[str, list[int]], in_channels: Mapping[str, int], mcpg: int
) -> tuple[dict[str, int], dict[str, str]]:
    """Per layer the smallest candidate ``G`` with at most ``mcpg`` input channels per group (``C / G <= mcpg``),
    else its largest candidate (the report says so)."""
    choice, skipped = {}, {}
    for name, cands in candidates.items():
        fit = [g for g in cands if in_channels[name] // g <= mcpg]
        g = fit[0] if fit else cands[-1]
        if not fit:
            skipped[name] = f"no legal G gives <= {mcpg} channels per group; took G={g}"
        if g > 1:
            choice[name] = g
    return choice, skipped


def table_choice(
    candidates: Mapping[str, list[int]],
    table: Mapping[str, int],
    *,
    shapes: Mapping[str, tuple[int, int]] | None = None,
    expected: Mapping[str, tuple[int | None, int | None]] | None = None,
) -> dict[str, int]:
    """A per-layer table ``{layer: G}`` checked against the layers: every named layer must be a regroupable conv of
    the model, ``G`` one of its candidates, and (seed format) ``F`` / ``C`` its kept output / input channels.

    Raises:
        PrunekitError: an unknown layer, an illegal ``G``, or ``F`` / ``C`` that do not match (one line each).
    """
    choice = {}
    for name, g in table.items():
        if name not in candidates:
            raise PrunekitError(
                f"group_config names {name!r}, which is not a dense conv of the model that GConv may regroup "
                f"(see `prunekit inspect`; excluded layers and model outputs stay dense)"
            )
        if expected and shapes and name in expected:
            f_exp, c_exp = expected[name]
            c_in, c_out = shapes[name]
            if (f_exp is not None and f_exp != c_out) or (c_exp is not None and c_exp != c_in):
                raise PrunekitError(
                    f"group_config says {name!r} has F={f_exp}, C={c_exp}; the model's layer has F={c_out}, "
                    f"C={c_in} kept channels"
                )
        if g not in candidates[name]:
            raise PrunekitError(
                f"group_config sets G={g} on {name!r}; legal here: {candidates[name]} (common divisors of its "
                "kept channels within max_groups / min_factor / allow_depthwise)"
            )
        if g > 1:
            choice[name] = int(g)
    return choice


def read_group_config(
    source: str | Path | Mapping[str, object],
) -> tuple[dict[str, int], dict[str, tuple[int | None, int | None]]]:
    """Read a per-layer group table: ``{layer: G}`` or the seed's ``{"module.layer": {"G": 2, "F": 64, "C": 64,
    "id": 3}}`` (gumi ``dump_group_conf``; the ``module.`` prefix of DataParallel names is dropped).

    Returns:
        ``(groups {layer: G}, expected {layer: (F, C)})`` (``None`` where the file gives no shape).

    Raises:
        PrunekitError: a missing / invalid file, or an entry without a positive integer ``G``.
    """
    if isinstance(source, Mapping):
        data: object = dict(source)
        where = "group_config"
    else:
        path = Path(source)
        where = f"group_config {path}"
        if not path.is_file():
            raise PrunekitError(f"{where} not found (a JSON file {{layer: G}} or the seed's group config)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise PrunekitError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PrunekitError(f"{where} must be a JSON object {{layer: G}}")
    groups, expected = {}, {}
    for key, value in data.items():
        name = str(key).removeprefix("module.")
        f = c = None
        if isinstance(value, dict):
            f, c, value = value.get("F"), value.get("C"), value.get("G")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PrunekitError(f"{where}: {key!r} needs a positive integer G, got {value!r}")
        groups[name] = int(value)
        expected[name] = (None if f is None else int(f), None if c is None else int(c))
    return groups, expected
