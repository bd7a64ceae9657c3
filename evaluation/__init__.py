"""The shared evaluator: fresh networks per seed, trained together on the device, last-epoch test accuracy."""

from ddbench.evaluation.evaluate import EvalResult, Evaluator, ReferenceResult, evaluate_synthetic, reference_results
from ddbench.evaluation.protocol import EvalProtocol

__all__ = ["EvalProtocol", "EvalResult", "Evaluator", "ReferenceResult", "evaluate_synthetic", "reference_results"]
