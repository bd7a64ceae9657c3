"""Model zoo: ConvNet family, literature evaluation architectures, timm models, and vmapped multi-seed helpers."""

from ddbench.models.convnet import ConvNet
from ddbench.models.features import feature_maps
from ddbench.models.functional import batched_forward, stack_state, supports_vmap_training, unstack_state
from ddbench.models.registry import check_model_options, create_model, list_models, model_spec, register_model

__all__ = [
    "ConvNet",
    "batched_forward",
    "check_model_options",
    "create_model",
    "feature_maps",
    "list_models",
    "model_spec",
    "register_model",
    "stack_state",
    "supports_vmap_training",
    "unstack_state",
]
