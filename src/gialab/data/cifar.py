"""CIFAR-10 / CIFAR-100 from the official "python version" archives, extracted by the user.

Source: https://www.cs.toronto.edu/~kriz/cifar.html (``cifar-10-batches-py`` with
``data_batch_1..5``, ``test_batch``, ``batches.meta``; ``cifar-100-python`` with ``train``,
``test``, ``meta``). gialab never downloads them: attacks are run against the user's own copy.

The files are pickles. They are read with an unpickler that only resolves the numpy names
needed to rebuild arrays, so a tampered file fails loudly instead of executing code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gialab.data.dataset import ImageDataset, make_dataset
from gialab.errors import GialabError

Variant = Literal["cifar10", "cifar100"]
Split = Literal["train", "test"]

_LAYOUT: dict[str, dict[str, Any]] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "names_key": "label_names",
        "labels_key": "labels",
        "classes": 10,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "names_key": "fine_label_names",
        "labels_key": "fine_labels",
        "classes": 100,
    },
}

_NUMPY_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how Python 3 writes bytes in protocol 0-2 pickles
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "numpy.core.multiarray":  # Python 2 era name; avoid numpy's shim warning
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def _unpickle(file: Path) -> dict[str, Any]:
    try:
        with open(file, "rb") as f:
            obj = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise GialabError(f"CIFAR file missing: {file}") from None
    except Exception as exc:  # any unpickling failure means the file is not what we expect
        raise GialabError(
            f"cannot read CIFAR file {file}: not a CIFAR python pickle ({exc})"
        ) from None
    if not isinstance(obj, dict):
        raise GialabError(
            f"cannot read CIFAR file {file}: expected a pickled dict, got {type(obj).__name__}"
        )
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _field(batch: dict[str, Any], key: str, file: Path) -> Any:
    if key not in batch:
        raise GialabError(f"CIFAR file {file} lacks the {key!r} entry; found {sorted(batch)}")
    return batch[key]


def _find_folder(path: Path, variant: str) -> Path:
    layout = _LAYOUT[variant]
    for candidate in (path, path / layout["folder"]):
        if (candidate / layout["meta"]).is_file():
            return candidate
    raise GialabError(
        f"no {variant} data at {path}: expected the folder {layout['folder']!r} (or its parent) "
        f"containing {layout['meta']}, {', '.join(layout['train'] + layout['test'])}"
    )


def load_cifar(path: Path, variant: Variant, split: Split = "train") -> ImageDataset:
    """One split of a local CIFAR copy as 3x32x32 images in [0, 1] (CIFAR-100: fine labels).

    ``path`` may be the extracted folder itself or the directory that contains it.
    """
    if variant not in _LAYOUT:
        raise GialabError(f"unknown CIFAR variant {variant!r}; valid: {', '.join(_LAYOUT)}")
    if split not in ("train", "test"):
        raise GialabError(f"unknown CIFAR split {split!r}; valid: test, train")
    path = Path(path).expanduser()
    if not path.is_dir():
        expected = _LAYOUT[variant]["folder"]
        raise GialabError(f"CIFAR path {path} is not a directory (expected {expected})")
    layout = _LAYOUT[variant]
    folder = _find_folder(path, variant)
    meta_file = folder / layout["meta"]
    raw_names = _field(_unpickle(meta_file), layout["names_key"], meta_file)
    names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in raw_names]
    if len(names) != layout["classes"]:
        raise GialabError(
            f"CIFAR meta {meta_file} lists {len(names)} classes; {variant} has {layout['classes']}"
        )

    images, labels = [], []
    for name in layout[split]:
        file = folder / name
        batch = _unpickle(file)
        try:
            data = np.asarray(_field(batch, "data", file), dtype=np.uint8)
            y = np.asarray(_field(batch, layout["labels_key"], file), dtype=np.int64)
        except (TypeError, ValueError):
            raise GialabError(f"CIFAR file {file} holds non-numeric data or labels") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or y.shape != (data.shape[0],):
            raise GialabError(
                f"CIFAR file {file} has data {data.shape} and labels {y.shape}; "
                f"expected (N, 3072) uint8 and (N,)"
            )
        if y.size and (y.min() < 0 or y.max() >= len(names)):
            raise GialabError(f"CIFAR file {file} has labels outside 0..{len(names) - 1}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(y)
    x = np.concatenate(images)
    if len(x) == 0:
        raise GialabError(f"CIFAR {split} split at {folder} holds no images")
    return make_dataset(variant, x.astype(np.float32) / 255.0, np.concatenate(labels), names)
