"""Evaluator names -> (options model, builder): the one place that lists evaluators.

A run names its evaluators as a list of specs, each `{"name": ..., **options}`; the
options are validated by the evaluator's pydantic model (unknown keys refused).
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ValidationError

from core.errors import UserError
from evaluators.arc import ARCEvaluator, ARCEvaluatorConfig
from evaluators.base import Evaluator
from evaluators.classification import ClassificationEvaluator, ClassificationEvaluatorConfig
from evaluators.ner import NEREvaluator, NEREvaluatorConfig
from evaluators.puzzle_predictions import PuzzlePredictionsConfig, PuzzlePredictionsEvaluator
from evaluators.squad import SquadEvaluator, SquadEvaluatorConfig

EVALUATORS: dict[str, tuple[type[BaseModel], Callable[[list[str], BaseModel], Evaluator]]] = {
    "arc": (ARCEvaluatorConfig, lambda data_paths, config: ARCEvaluator(data_paths[0], config)),
    "classification": (ClassificationEvaluatorConfig,
                       lambda data_paths, config: ClassificationEvaluator(data_paths[0], config)),
    "ner": (NEREvaluatorConfig, lambda data_paths, config: NEREvaluator(data_paths[0], config)),
    "puzzle_predictions": (PuzzlePredictionsConfig,
                           lambda data_paths, config: PuzzlePredictionsEvaluator(data_paths[0], config)),
    "squad": (SquadEvaluatorConfig, lambda data_paths, config: SquadEvaluator(data_paths[0], config)),
}
"""Short name -> (options model, builder taking the data paths and the validated options)."""

ALIASES = {"arc@ARC": "arc"}
"""Spellings accepted for compatibility with TRM's configs."""


def describe_validation_error(name: str, error: ValidationError) -> str:
    """One line naming each bad option and why it is wrong."""
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(options)"
        reason = "unknown option" if item["type"] == "extra_forbidden" else item["msg"].removeprefix("Value error, ")
        problems.append(f"{key}: {reason}")
    return f"evaluator {name!r}: " + "; ".join(problems)


def build_evaluators(specs: list[dict], data_paths: list[str]) -> list[Evaluator]:
    """Build one evaluator per spec, in order; mistakes raise `UserError`."""
    evaluators = []
    for spec in specs:
        if not isinstance(spec, dict) or "name" not in spec:
            raise UserError(f"an evaluator spec must be a mapping with a 'name' key, got {spec!r}")
        options = {key: value for key, value in spec.items() if key != "name"}
        name = ALIASES.get(spec["name"], spec["name"])
        if name not in EVALUATORS:
            known = sorted(EVALUATORS) + sorted(ALIASES)
            raise UserError(f"unknown evaluator {spec['name']!r}; known evaluators: {', '.join(known)}")
        if not data_paths:
            raise UserError(f"evaluator {name!r} needs a data path, but none was given")
        config_class, builder = EVALUATORS[name]
        try:
            config = config_class.model_validate(options)
        except ValidationError as error:
            raise UserError(describe_validation_error(name, error)) from None
        evaluators.append(builder(list(data_paths), config))
    return evaluators
