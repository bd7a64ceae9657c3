"""The shared evaluator: fresh networks per seed, trained together on the device, last-epoch test accuracy."""

from ddbench.evaluation.derive import eval_config_for_artifact, protocol_for_artifact
from ddbench.evaluation.evaluate import EvalResult, Evaluator, ReferenceResult, evaluate_synthetic, reference_results
from ddbench.evaluation.protocol import EvalProtocol

__all__ = ["EvalProtocol", "EvalResult", "Evaluator", "ReferenceResult", "eval_config_for_artifact",
           "evaluate_synthetic", "protocol_for_artifact", "reference_results"]
