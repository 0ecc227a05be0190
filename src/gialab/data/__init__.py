"""Data sources turned into one in-memory form, and their split among federated clients."""

from gialab.data.dataset import DataSpec, ImageDataset
from gialab.data.partition import partition_dirichlet, partition_iid
from gialab.data.registry import DATASETS, load_dataset
from gialab.data.text import TextDataset, TextSpec

__all__ = [
    "DATASETS",
    "DataSpec",
    "ImageDataset",
    "TextDataset",
    "TextSpec",
    "load_dataset",
    "partition_dirichlet",
    "partition_iid",
]
