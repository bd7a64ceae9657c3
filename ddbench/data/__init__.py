"""Datasets: one registry with uniform metadata; splits live on the device as tensors."""

from ddbench.data.registry import DatasetInfo, dataset_info, list_datasets, register_dataset
from ddbench.data.tensors import ClassTensors, Splits, load_dataset
from ddbench.data.zca import ZCA

__all__ = [
    "ClassTensors", "DatasetInfo", "Splits", "ZCA", "dataset_info", "list_datasets", "load_dataset", "register_dataset",
]
