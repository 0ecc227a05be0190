"""Dataset names as used in configs and on the command line, mapped to their loaders.

Built-in sets ship with scikit-image / scikit-learn and need nothing else; the path-based ones
read the user's own files. ``DATASETS`` names the image sets; ``TEXT_DATASETS`` (``pydoc``,
:mod:`gialab.data.text`) hold token sequences for language-model attacks. ``data_path`` is
rejected for built-ins rather than ignored, because a path that silently does nothing usually
means the user picked the wrong dataset name.
"""

from __future__ import annotations

from pathlib import Path

from gialab.data.cifar import load_cifar
from gialab.data.dataset import ImageDataset
from gialab.data.digits import CLASS_NAMES as DIGIT_CLASSES
from gialab.data.digits import load_digits_dataset
from gialab.data.faces import CLASS_NAMES as FACE_CLASSES
from gialab.data.faces import load_faces
from gialab.data.image_folder import load_image_folder
from gialab.data.natural import PHOTOS, load_natural
from gialab.data.text import DEFAULT_SEQUENCE_LENGTH, TEXT_DATASETS, TextDataset, load_text
from gialab.errors import GialabError, unknown_name

BUILTIN_DATASETS = ("natural", "faces", "digits")
PATH_DATASETS = ("cifar10", "cifar100", "image-folder")
DATASETS = BUILTIN_DATASETS + PATH_DATASETS
_CLASS_COUNTS = {"natural": len(PHOTOS), "faces": len(FACE_CLASSES), "digits": len(DIGIT_CLASSES),
                 "cifar10": 10, "cifar100": 100}


def class_count(name: str) -> int | None:
    """How many classes image set ``name`` has, known without loading it (None: it depends on the files)."""
    return _CLASS_COUNTS.get(name)


def load_dataset(
    name: str, *, path: Path | None = None, seed: int = 0, sequence_length: int | None = None
) -> ImageDataset | TextDataset:
    """Load a dataset by name; ``seed`` affects ``natural`` and the order of text sequences.

    CIFAR loads the training split; call :func:`gialab.data.cifar.load_cifar` for the test split.
    ``sequence_length`` (tokens per sequence) applies to text datasets only.
    """
    if name not in DATASETS + TEXT_DATASETS:
        raise unknown_name("dataset", name, DATASETS + TEXT_DATASETS)
    if name in TEXT_DATASETS:
        if path is not None:
            raise GialabError(f"dataset {name!r} is built in and takes no data_path")
        return load_text(sequence_length or DEFAULT_SEQUENCE_LENGTH, seed=seed)
    if sequence_length is not None:
        raise GialabError(
            f"sequence_length applies to text datasets ({', '.join(TEXT_DATASETS)}); dataset {name!r} holds images"
        )
    if name in BUILTIN_DATASETS:
        if path is not None:
            raise GialabError(
                f"dataset {name!r} is built in and takes no data_path; "
                f"data_path applies only to {', '.join(PATH_DATASETS)}"
            )
        if name == "natural":
            return load_natural(seed=seed)
        return load_faces() if name == "faces" else load_digits_dataset()
    if path is None:
        raise GialabError(f"dataset {name!r} requires data_path (the folder holding its files)")
    if name == "image-folder":
        return load_image_folder(Path(path))
    return load_cifar(Path(path), name)  # type: ignore[arg-type]
