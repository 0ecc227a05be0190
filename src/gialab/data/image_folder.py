"""The user's own images, one subfolder per class (the torchvision ``ImageFolder`` layout).

Lets an attack be run against data the user actually cares about, without gialab knowing the
domain. Images are read with Pillow and forced to RGB so one model shape fits every file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from gialab.data.dataset import ImageDataset, make_dataset
from gialab.errors import GialabError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def _read(file: Path, size: int | None) -> np.ndarray:
    try:
        with Image.open(file) as img:
            rgb = img.convert("RGB")  # GIFs: first frame; palettes, alpha and grayscale: RGB
            if size is not None and rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.LANCZOS)
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise GialabError(f"cannot read image {file}: {exc}") from None


def load_image_folder(path: Path, size: int | None = 32) -> ImageDataset:
    """Images under ``path/<class>/``, classes in sorted folder-name order, resized to size x size.

    ``size=None`` keeps the files' own resolution, which then has to be the same for all of
    them. Files with other suffixes and hidden entries are skipped; a class folder without
    images is an error because it would silently shift every later label.
    """
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise GialabError(f"image size must be a positive integer or None, got {size!r}")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise GialabError(
            f"image folder {root} is not a directory (expected one subfolder per class)"
        )
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise GialabError(
            f"image folder {root} has no class subfolders (expected {root}/<class>/<image>)"
        )

    images: list[np.ndarray] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(
            f
            for f in class_dir.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise GialabError(
                f"class folder {class_dir} has no images "
                f"(valid suffixes: {', '.join(IMAGE_SUFFIXES)})"
            )
        for file in files:
            arr = _read(file, size)
            if images and arr.shape != images[0].shape:
                raise GialabError(
                    f"image {file} is {arr.shape[1]}x{arr.shape[0]} but earlier ones are "
                    f"{images[0].shape[1]}x{images[0].shape[0]}; pass a size to resize them all"
                )
            images.append(arr)
            labels.append(label)
    x = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return make_dataset("image-folder", x, np.asarray(labels), [d.name for d in class_dirs])
