"""The training layer shared by methods and the evaluator: network batches, the recipe, the one trainer,
teachers, feature embeddings and data fingerprints. `methods/` and `evaluation/` both import from here, never
each other."""

from ddbench.training.embedding import data_fingerprint, embed_all, train_embeddings
from ddbench.training.flat import FlatModel, FlatNetworks, gsam_gradient
from ddbench.training.networks import NetworkBatch, init_model, layout_digest
from ddbench.training.recipe import TeacherConfig, TrainRecipe
from ddbench.training.teacher import Teacher, load_teacher
from ddbench.training.trainer import test_accuracy, train

__all__ = [
    "FlatModel",
    "FlatNetworks",
    "NetworkBatch",
    "TeacherConfig",
    "Teacher",
    "TrainRecipe",
    "data_fingerprint",
    "embed_all",
    "layout_digest",
    "gsam_gradient",
    "init_model",
    "load_teacher",
    "test_accuracy",
    "train",
    "train_embeddings",
]
