"""Natural-image classification set built from photos bundled with scikit-image and scikit-learn.

Sources (all shipped inside the installed packages, nothing is downloaded):
``skimage.data``: astronaut, coffee, chelsea, rocket, immunohistochemistry, hubble_deep_field,
retina, colorwheel; ``sklearn.datasets.load_sample_images``: china, flower.

Gradient inversion needs CIFAR-like natural images, but CIFAR itself cannot ship with the
package. Random 32x32 crops of real photos give the same texture and colour statistics, and one
class per photo gives label structure that label-inference attacks can exploit.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from gialab.data.dataset import ImageDataset, copy_dataset, make_dataset
from gialab.errors import GialabError

SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "colorwheel",
)
SKLEARN_PHOTOS = ("china", "flower")
PHOTOS = SKIMAGE_PHOTOS + SKLEARN_PHOTOS

SIZE = 32
MIN_CROP = 48
# Photos are shrunk once so the short side is at most this; crops then stay cheap to resample.
MAX_SHORT_SIDE = 384
# Retina and Hubble have large black areas; near-flat crops carry no information to invert.
MIN_CROP_STD = 0.04
MAX_TRIES = 20


@lru_cache(maxsize=1)
def _photos() -> tuple[Image.Image, ...]:
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    arrays = [getattr(skdata, name)()[..., :3] for name in SKIMAGE_PHOTOS]
    sample = load_sample_images()
    by_name = {Path(p).stem: im for p, im in zip(sample.filenames, sample.images)}
    arrays += [by_name[name] for name in SKLEARN_PHOTOS]
    out = []
    for arr in arrays:
        img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).convert("RGB")
        scale = MAX_SHORT_SIDE / min(img.size)
        if scale < 1:
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
        out.append(img)
    return tuple(out)


def _crop(img: Image.Image, rng: np.random.Generator) -> np.ndarray:
    patch = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    for _ in range(MAX_TRIES):
        side = int(rng.integers(MIN_CROP, min(img.size) // 2 + 1))
        x = int(rng.integers(0, img.width - side + 1))
        y = int(rng.integers(0, img.height - side + 1))
        # LANCZOS over a box widens its kernel when shrinking, i.e. it anti-aliases.
        patch = np.asarray(img.resize((SIZE, SIZE), Image.LANCZOS, box=(x, y, x + side, y + side)))
        if patch.std() / 255.0 >= MIN_CROP_STD:
            break
    return patch


@lru_cache(maxsize=8)
def _build(seed: int, per_class: int) -> ImageDataset:
    rng = np.random.default_rng(seed)
    images = np.empty((len(PHOTOS) * per_class, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(len(PHOTOS)), per_class)
    for label, img in enumerate(_photos()):
        for i in range(per_class):
            images[label * per_class + i] = _crop(img, rng)
    chw = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return make_dataset("natural", chw, labels, PHOTOS)


def load_natural(seed: int = 0, per_class: int = 100) -> ImageDataset:
    """Crops of bundled photos, class = source photo, grouped by class, identical for a seed.

    Built once per (seed, per_class) and cached; each call returns its own tensors so callers
    may modify them freely.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise GialabError(f"per_class must be a positive integer, got {per_class!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise GialabError(f"seed must be an integer, got {seed!r}")
    return copy_dataset(_build(int(seed), per_class))
