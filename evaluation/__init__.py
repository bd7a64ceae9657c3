"""The shared evaluator: fresh networks per seed, trained together on the device, last-epoch test accuracy."""

from ddbench.evaluation.evaluate import EvalResult, Evaluator, evaluate_synthetic
from ddbench.evaluation.networks import NetworkBatch
from ddbench.evaluation.protocol import EvalProtocol, TeacherConfig, TrainRecipe
from ddbench.evaluation.trainer import test_accuracy, train_networks

__all__ = [
    "EvalProtocol",
    "EvalResult",
    "Evaluator",
    "NetworkBatch",
    "TeacherConfig",
    "TrainRecipe",
    "evaluate_synthetic",
    "test_accuracy",
    "train_networks",
]
