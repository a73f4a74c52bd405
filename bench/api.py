"""Everything a plugin file in ``methods/`` or ``datasets/`` needs, in one import."""

from bench.compat import CompatArchitecture, CompatWeighting
from bench.data import DomainBedScenario, RealScenario
from bench.method import (
    MethodSpec,
    register_architecture,
    register_method,
    register_weighting,
)
from bench.registry import scenarios
from bench.scenario import (
    DataMissingError,
    Scenario,
    ScenarioData,
    Split,
    TaskSpec,
    TrainingSetup,
)

register_scenario = scenarios.register

__all__ = [
    "CompatArchitecture",
    "CompatWeighting",
    "DataMissingError",
    "DomainBedScenario",
    "MethodSpec",
    "RealScenario",
    "Scenario",
    "ScenarioData",
    "Split",
    "TaskSpec",
    "TrainingSetup",
    "register_architecture",
    "register_method",
    "register_scenario",
    "register_weighting",
]
