"""Declared settings: each tunable value's type and range, declared once, checked at planning.

Every group of settings a run takes — the training setup (``train.*``,
:class:`bench.data.scenario.TrainingSetup`), an architecture's and a weighting's keywords
(``arch.*``, ``weighting.*``, declared where they are registered in ``methods/*.py``) and a
backbone's keywords (``backbone.*``, :mod:`bench.models.backbones`) — is a pydantic model.
``--set`` overrides, ablation presets and the paper profile's overrides are validated against it
when the run is planned, so a typo'd key or an impossible value stops the command with one line
(what is wrong, and what is allowed) before anything is trained or allocated.

Values are validated as JSON (they come from ``--set KEY=JSON`` or a record): strict types (``1.5``
is not an epoch count, ``"abc"`` not a learning rate, ``true`` not an integer), integers accepted
for floats, arrays for tuples, no NaN or infinity, unknown keys refused with the nearest known key.

A plugin that declares nothing still gets checked: :func:`settings_from_defaults` types each key
as its default (``None``: any JSON value) and refuses keys it does not have.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo


class SettingsError(ValueError):
    """A setting the declared types or ranges refuse; one line naming the key, the problem and
    what is allowed (the CLI prints it, exit code 2, before any training)."""


class UnknownSettingError(SettingsError):
    """A key that the declared settings do not have."""


class Settings(BaseModel):
    """Base of a declared group of settings: each field's annotation is its type and range, its
    default the value used when the setting is not given."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The defaults recorded in a run's identity: every field except those declared with
        :func:`later` (recorded only when given)."""
        return {name: field.get_default(call_default_factory=True)
                for name, field in cls.model_fields.items() if not field.exclude}


def later(default: Any, **constraints: Any) -> Any:
    """A setting added after records existed (``Field(default, exclude=True)``): its default is
    left out of the run's identity, so the configs — and hashes — of earlier runs stay valid."""
    return Field(default, exclude=True, **constraints)


def _inferred_type(value: Any) -> Any:
    if isinstance(value, bool):
        return bool
    if isinstance(value, int):
        return int
    if isinstance(value, float):
        return float
    if isinstance(value, str):
        return str
    if isinstance(value, (list, tuple)):
        return list[Any]
    if isinstance(value, dict):
        return dict[str, Any]
    return Any


def settings_from_defaults(name: str, defaults: dict[str, Any]) -> type[Settings]:
    """Settings for a plugin that declares only defaults: each key typed as its default."""
    fields: dict[str, Any] = {key: (_inferred_type(value), value)
                              for key, value in defaults.items()}
    return create_model(f"{name}_settings", __base__=Settings, **fields)


def validate(model: type[Settings], values: dict[str, Any], group: str, owner: str,
             given: dict[str, Any] | None = None) -> Settings:
    """Validate ``values`` (JSON-typed) against ``model``; :class:`SettingsError` names the first
    problem with ``--set {group}.KEY=VALUE`` (``given``: the keys the user set, for the message;
    default all of ``values``)."""
    try:
        text = json.dumps(values, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise SettingsError(f"{group} settings of {owner} are not JSON values ({err})") from None
    try:
        return model.model_validate_json(text)
    except ValidationError as err:
        raise explain(err, model.model_fields, values, group, owner) from None


def _shown(group: str, key: str) -> str:
    """``group.key`` as typed, or quoted when it holds unprintable characters."""
    return f"{group}.{key}" if key.isprintable() else json.dumps(f"{group}.{key}")


def unknown_key(key: str, known: list[str], group: str, owner: str) -> SettingsError:
    """One line for a key that no declared setting has, naming the nearest one."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    if close:
        hint = f"did you mean {group}.{close[0]}?"
    elif known:
        hint = f"its {group} settings: {', '.join(known)}"
    else:
        hint = f"it has no {group} settings"
    return UnknownSettingError(f"unknown setting {_shown(group, key)} for {owner}; {hint}")


def explain(err: ValidationError, fields: dict[str, FieldInfo], values: dict[str, Any],
            group: str, owner: str, current: dict[str, Any] | None = None) -> SettingsError:
    """One line for the first problem of ``err`` (``fields``: the declared settings;
    ``current``: the values the run would use without the override, else the defaults)."""
    first = err.errors(include_url=False)[0]
    key = str(first["loc"][0]) if first["loc"] else ""
    if first["type"] == "extra_forbidden":
        return unknown_key(key, sorted(fields), group, owner)
    message = first["msg"].removeprefix("Value error, ")
    if key not in fields:  # a check across settings (a model validator)
        return SettingsError(f"{group} settings of {owner}: {message}")
    field = fields[key]
    notes = [field.description] if field.description else []
    if current is not None and key in current:
        notes.insert(0, f"without it: {json.dumps(current[key], default=str)}")
    elif not field.is_required():
        notes.insert(0, f"default {json.dumps(field.get_default(), default=str)}")
    shown = json.dumps(values.get(key), default=str)
    return SettingsError(f"--set {group}.{key}={shown} refused for {owner}: {message}"
                         + (f" ({'; '.join(notes)})" if notes else ""))
