"""The one declared schema of a result record (pydantic), used wherever records are read.

``results check``, the leaderboard and resume (``find_record``) all validate a record with
:func:`record_problem`; a record that does not match is reported (one line naming the first
problem) and treated as absent, so the next sweep runs it again — never a crash further on.

What the schema guarantees to the report code: ``seed`` is a non-negative integer, every metric
is a finite number, an ``ok`` record has ``tasks`` and its ``metrics.test`` holds every metric
of every task it lists (and so does ``selection.<rule>.test`` for every rule stored), parameter
counts are integers, ``param_scaling`` maps task counts to integers. Unknown keys are allowed
(records gain fields over time); the types are strict (a seed ``"0"`` is not a seed).

Torch-free and free of the rest of ``bench`` (``tests/test_layout.py``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

STATUSES = ("ok", "diverged", "failed")

Finite = Annotated[float, Field(allow_inf_nan=False)]
NonNegative = Annotated[int, Field(ge=0)]
#: parameter counts (read as floats by the report: bounded well inside a float's range)
Count = Annotated[int, Field(ge=0, le=10**15)]
Name = Annotated[str, Field(min_length=1)]
#: ``{task: {metric: value}}``
SplitMetrics = dict[Name, dict[Name, Finite]]


class _Open(BaseModel):
    """Strict types, unknown keys kept."""

    model_config = ConfigDict(strict=True, extra="allow")


class MetricDescription(_Open):
    name: Name
    label: str
    higher_is_better: bool


class TaskDescription(_Open):
    name: Name
    label: str
    kind: Name
    num_outputs: NonNegative
    metrics: Annotated[list[MetricDescription], Field(min_length=1)]


class RunConfig(_Open):
    """The parts of a run's config that reading records relies on."""

    heterogeneity: str | None = None
    method_identity: dict[str, Any] | None = None


class Attempt(_Open):
    """An earlier attempt of the same run (a failed, diverged or invalid record it replaced)."""

    status: str
    error: str | None = None


class _Record(_Open):
    kind: Literal["run"] = "run"
    method: Name
    label: Name | None = None
    ablation: str | None = None
    scenario: Name
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)]
    profile: Name
    config: RunConfig
    config_hash: Name
    versions: dict[str, str]
    wall_time_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None
    trainable_params: Count | None
    total_params: Count | None
    param_scaling: dict[Annotated[str, Field(pattern=r"^[0-9]{1,6}$")], Count] | None = None
    attempts: list[Attempt] = []


class Metrics(_Open):
    val: SplitMetrics
    test: SplitMetrics


class Selected(_Open):
    """What one model-selection rule chose: the epoch and the metrics there."""

    epoch: NonNegative | None = None
    val: SplitMetrics | None = None
    test: SplitMetrics


class OkRecord(_Record):
    """A finished run: test metrics for every task and metric it declares, under the default
    selection (``metrics.test``) and under every rule it stores (``selection.<rule>.test``)."""

    status: Literal["ok"]
    metrics: Metrics
    tasks: Annotated[list[TaskDescription], Field(min_length=1)]
    trainable_params: Count
    total_params: Count
    #: per model-selection rule (records written before the rules existed have none)
    selection: dict[Name, Selected] | None = None

    @model_validator(mode="after")
    def _every_declared_metric_is_reported(self) -> OkRecord:
        splits = {"metrics.test": self.metrics.test}
        for rule, chosen in (self.selection or {}).items():
            splits[f"selection.{rule}.test"] = chosen.test
        for where, split in splits.items():
            for task in self.tasks:
                reported = split.get(task.name)
                if reported is None:
                    raise ValueError(f"{where} has no task {task.name!r}")
                for metric in task.metrics:
                    if metric.name not in reported:
                        raise ValueError(f"{where}.{task.name} has no metric {metric.name!r}")
        return self


class UnfinishedRecord(_Record):
    """A run that diverged or raised: its error instead of metrics."""

    status: Literal["diverged", "failed"]
    metrics: dict[str, Any]
    error: str | None = None


Record = Annotated[OkRecord | UnfinishedRecord, Field(discriminator="status")]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Record)


def record_problem(record: Any) -> str | None:
    """``None`` when ``record`` (a parsed JSON object) is a valid run record, else one line
    naming the first problem (and how many more there are)."""
    if not isinstance(record, dict):
        return "not a JSON object"
    try:
        _ADAPTER.validate_python(record)
    except ValidationError as err:
        return _one_line(err)
    return None


def _one_line(err: ValidationError) -> str:
    errors = err.errors(include_url=False)
    first = errors[0]
    loc = [str(part) for part in first["loc"]]
    if loc and loc[0] in STATUSES:  # the discriminator's branch, not a field
        loc = loc[1:]
    where = ".".join(loc)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "union_tag_invalid":
        where, message = "status", f"unknown status {first['input'].get('status')!r}; " \
                                   f"expected one of {', '.join(STATUSES)}"
    elif first["type"] == "union_tag_not_found":
        where, message = "status", "missing"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    text = f"{where}: {message}" if where else message
    return " ".join(text.split()) + more


def json_schema() -> dict[str, Any]:
    """The schema as JSON Schema (documentation; e.g. for tools outside Python)."""
    return _ADAPTER.json_schema()
