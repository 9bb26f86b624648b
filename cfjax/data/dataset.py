"""What a dataset is in cfjax: its name and spec, its class names, and the :class:`Dataset`
container of one split (with :func:`subset` and :func:`classes`).

**Specs.** A dataset is named by a *spec*: ``name[@size][:task]``, e.g. ``"bloodmnist@128"``
or ``"celeb_a@64:Smiling"`` (:func:`dataset_spec` builds one, :func:`parse_spec` reads one).
``size`` is the image side (MedMNIST+: which file; CelebA: the resize target); ``task`` turns
CelebA into a 2-class dataset labelled by that attribute (0 = without, 1 = with), the 40
attributes staying in ``attributes`` as descriptors. Jobs, caches and the CLI pass the spec
around as the dataset's name, so models trained at 64 px never meet 128 px data.

Nothing here reads a file: :mod:`cfjax.data.sources` loads the data (``load``) and re-exports
every public name defined here.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import numpy as np

from cfjax.data.medmnist import BLOODMNIST_CLASSES
from cfjax.errors import bad_arg

DATASETS = ("mnist5k", "fashion_mnist", "mnist", "celeb_a", "celeb_a_hq", "bloodmnist")
_TFDS_SPLITS = {"mnist": ("train", "test"), "fashion_mnist": ("train", "test"), "celeb_a": ("train", "validation", "test"),
                "celeb_a_hq": ("train", "test"), "bloodmnist": ("train", "val", "test")}
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee",
    "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
"""CelebA's 40 binary attributes in TFDS (= ``list_attr_celeba.txt``) order."""
_CELEBA = ("celeb_a", "celeb_a_hq")
_MIN_SIZE = 8
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGITS = tuple(str(i) for i in range(10))
_CLASS_NAMES = {"mnist5k": DIGITS, "mnist": DIGITS, "fashion_mnist": FASHION_CLASSES, "celeb_a": (), "celeb_a_hq": (),
                "bloodmnist": BLOODMNIST_CLASSES}


class DataSpec(NamedTuple):
    """A parsed dataset spec: ``name``, image ``size`` (``None``: the dataset's default) and
    CelebA ``task`` attribute (``None``: no task)."""

    name: str
    size: int | None
    task: str | None


def dataset_spec(name: str, size: int | None = None, task: str | None = None) -> str:
    """``name[@size][:task]``, validated (see the module docstring).

    >>> dataset_spec("bloodmnist", 128), dataset_spec("celeb_a", 64, "Smiling")
    ('bloodmnist@128', 'celeb_a@64:Smiling')
    """
    base = parse_spec(name)
    if base.size is not None and size is not None and base.size != size:
        raise bad_arg("size", size, f"the size in the dataset spec {name!r} ({base.size}) or no size")
    if base.task is not None and task is not None and base.task != task:
        raise bad_arg("task", repr(task), f"the task in the dataset spec {name!r} ({base.task!r}) or no task")
    size = base.size if size is None else size
    task = base.task if task is None else task
    _check_spec(DataSpec(base.name, size, task))
    return base.name + ("" if size is None else f"@{size}") + ("" if task is None else f":{task}")


def parse_spec(spec: str, arg: str = "data") -> DataSpec:
    """``"celeb_a@64:Smiling"`` -> ``DataSpec("celeb_a", 64, "Smiling")`` (validated; errors
    name the argument ``arg``)."""
    if not isinstance(spec, str):
        raise bad_arg(arg, repr(spec), f"a dataset name (one of {DATASETS}, optionally name@SIZE[:TASK])")
    rest, _, task = spec.partition(":")
    name, at, size_s = rest.partition("@")
    size = None
    if at:
        if not size_s.isdigit():
            raise bad_arg(arg, repr(spec), "name@SIZE with SIZE a positive integer, e.g. 'bloodmnist@128'")
        size = int(size_s)
    out = DataSpec(name, size, task or None)
    _check_spec(out, arg)
    return out


def _check_spec(s: DataSpec, arg: str = "data") -> None:
    if s.name not in DATASETS:
        raise bad_arg(arg, repr(s.name), f"one of {DATASETS}")
    if s.size is not None:
        if isinstance(s.size, bool) or not isinstance(s.size, (int, np.integer)) or s.size < _MIN_SIZE:
            raise bad_arg("size", repr(s.size), f"an image side of at least {_MIN_SIZE} px")
        if s.name in ("mnist5k", "mnist", "fashion_mnist") and s.size != 28:
            raise bad_arg("size", s.size, f"28 (or no size) for {s.name!r}: its images are 28x28")
    if s.task is not None:
        if s.name not in _CELEBA:
            raise bad_arg("task", repr(s.task), f"no task for {s.name!r} (tasks are CelebA attributes: celeb_a, celeb_a_hq)")
        if s.task not in CELEBA_ATTRIBUTES:
            raise bad_arg("task", repr(s.task), f"a CelebA attribute, one of {CELEBA_ATTRIBUTES}")


def task_class_names(task: str) -> tuple[str, str]:
    """The two classes of a CelebA attribute task: ``("not <task>", "<task>")``."""
    return (f"not {task}", task)


def class_names(name: str) -> tuple[str, ...]:
    """The class names of dataset spec ``name`` without loading it (for argument checks).

    ``bloodmnist`` gives BloodMNIST's 8 cell types even when the file is a synthetic one that
    stores its own names (:func:`~cfjax.data.sources.load` returns those); CelebA gives ``()``
    without a task and ``("not T", "T")`` with task ``T``.
    """
    s = parse_spec(name)
    if s.task is not None:
        return task_class_names(s.task)
    return _CLASS_NAMES[s.name]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Images, labels and optional binary attributes of one split.

    A frozen dataclass with the ``NamedTuple`` conveniences (``_replace``, field access) but not
    a tuple: ``len(ds)`` is the number of examples and ``ds == other`` is identity, so it is never
    mistaken for a 7-leaf pytree or compared element-wise.

    Attributes:
      images: float32 [N, H, W, C] in [0, 1].
      labels: int32 [N] class indices (all zeros for CelebA, which has no class: train
        per-attribute classifiers from ``attributes``).
      attributes: float32 [N, A] in {0, 1}, or ``None``.
      attribute_names: the A attribute names (``()`` when ``attributes`` is ``None``).
      class_names: the K class names (``()`` for CelebA).
      name: the dataset name, one of :data:`DATASETS`.
      split: the split it was read from.
    """

    images: np.ndarray
    labels: np.ndarray
    attributes: np.ndarray | None
    attribute_names: tuple[str, ...]
    class_names: tuple[str, ...]
    name: str
    split: str

    @property
    def num_classes(self) -> int:
        """K, the number of classes (0 for CelebA)."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)``."""
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.images)

    def _replace(self, **changes) -> "Dataset":
        """A copy with some fields replaced (as ``NamedTuple._replace``)."""
        return dataclasses.replace(self, **changes)


def subset(ds: Dataset, idx) -> Dataset:
    """The examples ``idx`` (int indices or a boolean mask over N) of ``ds``, copied."""
    idx = np.asarray(idx)
    return ds._replace(
        images=ds.images[idx],
        labels=ds.labels[idx],
        attributes=None if ds.attributes is None else ds.attributes[idx],
    )


def classes(ds: Dataset, keep: Sequence[int]) -> Dataset:
    """Only the examples whose label is in ``keep`` (e.g. ``classes(ds, [3, 8])``), in order."""
    return subset(ds, np.isin(ds.labels, np.asarray(list(keep), np.int32)))


def _splits(name: str) -> tuple[str, ...]:
    return _TFDS_SPLITS.get(name, ("train", "test")) + ("all",)


def _check_split(name: str, split: str) -> None:
    if split not in _splits(name):
        raise bad_arg("split", repr(split), f"one of {_splits(name)} for {name!r}")


def _limit(ds: Dataset, limit: int | None) -> Dataset:
    return ds if limit is None or limit >= len(ds) else subset(ds, np.arange(limit))


__all__ = [
    "CELEBA_ATTRIBUTES",
    "DATASETS",
    "DIGITS",
    "FASHION_CLASSES",
    "DataSpec",
    "Dataset",
    "class_names",
    "classes",
    "dataset_spec",
    "parse_spec",
    "subset",
    "task_class_names",
]
