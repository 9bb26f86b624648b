"""Data layer: datasets as host arrays (see :mod:`cfjax.data.sources`)."""

from cfjax.data.sources import (
    DATASETS,
    FASHION_CLASSES,
    FASHION_MNIST_DIR,
    Dataset,
    class_names,
    classes,
    load,
    load_fashion_mnist_idx,
    load_idx,
    load_mnist5k,
    load_tfds,
    mnist5k_indices,
    subset,
)

__all__ = [
    "DATASETS",
    "FASHION_CLASSES",
    "FASHION_MNIST_DIR",
    "Dataset",
    "class_names",
    "classes",
    "load",
    "load_fashion_mnist_idx",
    "load_idx",
    "load_mnist5k",
    "load_tfds",
    "mnist5k_indices",
    "subset",
]
