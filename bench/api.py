"""Everything a plugin file in ``methods/`` or ``datasets/`` needs, in one import."""

from bench.data.real import DomainBedScenario, RealScenario
from bench.data.scenario import (
    DataMissingError,
    Scenario,
    ScenarioData,
    Split,
    TaskSpec,
    TrainingSetup,
)
from bench.data.search import Choice, Distribution, LogUniform, Uniform
from bench.data.settings import Settings, later
from bench.models.compat import CompatArchitecture, CompatWeighting
from bench.models.method import (
    MethodSpec,
    register_architecture,
    register_method,
    register_weighting,
)
from bench.registry import scenarios

register_scenario = scenarios.register

__all__ = [
    "Choice",
    "CompatArchitecture",
    "CompatWeighting",
    "DataMissingError",
    "Distribution",
    "DomainBedScenario",
    "LogUniform",
    "MethodSpec",
    "RealScenario",
    "Scenario",
    "ScenarioData",
    "Settings",
    "Split",
    "TaskSpec",
    "TrainingSetup",
    "Uniform",
    "later",
    "register_architecture",
    "register_method",
    "register_scenario",
    "register_weighting",
]
