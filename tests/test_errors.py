"""`prunekit.errors.validation_message`: one line per pydantic ValidationError."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from prunekit.errors import validation_message


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Inner(_Strict):
    lr: float = Field(gt=0)
    steps: list[int] = []

    @field_validator("steps")
    @classmethod
    def _sorted(cls, v: list[int]) -> list[int]:
        if v != sorted(v):
            raise ValueError("steps must be increasing")
        return v


class A(_Strict):
    name: Literal["a"] = "a"
    size: int = 1


class B(_Strict):
    name: Literal["b"] = "b"
    depth: int = 1


class Outer(_Strict):
    model: str
    train: Inner
    method: Annotated[A | B, Field(discriminator="name")] = A()


def _error(data: dict) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        Outer.model_validate(data)
    return info.value


GOOD = {"model": "m", "train": {"lr": 0.1}}


def test_unknown_key_names_the_dotted_key_and_the_reference():
    msg = validation_message(_error({**GOOD, "train": {"lr": 0.1, "lrr": 1}}), what="config")
    assert (
        msg
        == "invalid config: unknown key 'train.lrr' (check the spelling; see the config reference in README.md)"
    )
    msg = validation_message(_error({**GOOD, "bogus": 1}), what="plan", reference="prunekit.space.plan.Plan")
    assert msg == "invalid plan: unknown key 'bogus' (check the spelling; see prunekit.space.plan.Plan)"
    assert validation_message(_error({**GOOD, "bogus": 1}), what="x", reference=None).endswith(
        "(check the spelling)"
    )


def test_missing_key():
    assert validation_message(_error({"train": {"lr": 0.1}}), what="config") == (
        "invalid config: missing required key 'model'"
    )
    assert validation_message(_error({"model": "m", "train": {}}), what="config") == (
        "invalid config: missing required key 'train.lr'"
    )


def test_wrong_type_and_bad_value_show_the_input():
    msg = validation_message(_error({**GOOD, "train": {"lr": "fast"}}), what="config")
    assert msg.startswith("invalid config: invalid value for 'train.lr': Input should be a valid number")
    assert msg.endswith("(got 'fast')")
    msg = validation_message(_error({**GOOD, "train": {"lr": -1}}), what="config")
    assert msg == "invalid config: invalid value for 'train.lr': Input should be greater than 0 (got -1)"


def test_value_error_prefix_is_dropped():
    msg = validation_message(_error({**GOOD, "train": {"lr": 0.1, "steps": [3, 1]}}), what="config")
    assert msg == "invalid config: invalid value for 'train.steps': steps must be increasing (got [3, 1])"


def test_nested_location_with_list_index():
    msg = validation_message(_error({**GOOD, "train": {"lr": 0.1, "steps": [1, "x"]}}), what="config")
    assert msg.startswith(
        "invalid config: invalid value for 'train.steps[1]': Input should be a valid integer"
    )
    assert msg.endswith("(got 'x')")


def test_discriminator_tag_dropped_from_location():
    exc = _error({**GOOD, "method": {"name": "b", "depth": "deep"}})
    assert exc.errors()[0]["loc"] == ("method", "b", "depth")  # what pydantic reports
    msg = validation_message(exc, what="config", drop={"a", "b"})
    assert msg.startswith("invalid config: invalid value for 'method.depth': ")
    assert "'method.b.depth'" in validation_message(exc, what="config")  # kept without drop
    msg = validation_message(
        _error({**GOOD, "method": {"name": "b", "size": 2}}), what="config", drop=("a", "b")
    )
    assert msg.startswith("invalid config: unknown key 'method.size'")


def test_union_tags():
    msg = validation_message(_error({**GOOD, "method": {"name": "c"}}), what="config")
    assert msg == "invalid config: invalid value for 'method.name': expected one of 'a', 'b' (got 'c')"
    msg = validation_message(_error({**GOOD, "method": {"size": 2}}), what="config")
    assert msg == "invalid config: missing required key 'method.name'"


def test_prefix_and_model_level_errors():
    with pytest.raises(ValidationError) as info:
        TypeAdapter(A).validate_python({"size": "big"})
    msg = validation_message(info.value, what="method config", prefix="a")
    assert msg.startswith("invalid method config: invalid value for 'a.size': ")
    with pytest.raises(ValidationError) as info:
        Outer.model_validate(3)
    assert validation_message(info.value, what="config").startswith(
        "invalid config: Input should be a valid dictionary"
    )  # an empty location: no "for ''"


def test_long_input_is_shortened_to_one_line():
    msg = validation_message(_error({**GOOD, "train": {"lr": "x\n" * 100}}), what="config")
    assert "\n" not in msg and msg.endswith("...)") and len(msg) < 250


def test_every_error_in_one_line():
    from pydantic import BaseModel, Field, ValidationError

    from prunekit.errors import validation_message

    class M(BaseModel):
        a: int = Field(gt=0)
        b: str

    try:
        M(a=-1)
    except ValidationError as exc:
        first, every = validation_message(exc, what="x"), validation_message(exc, what="x", every=True)
    assert "'a'" in first and "'b'" not in first
    assert "'a'" in every and "missing required key 'b'" in every and "; " in every and "\n" not in every
