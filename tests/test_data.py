"""Data: loader contracts, determinism, local-file round trips, bad inputs, client partitions."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gialab.data import (
    DATASETS,
    DataSpec,
    ImageDataset,
    load_dataset,
    partition_dirichlet,
    partition_iid,
)
from gialab.data.cifar import load_cifar
from gialab.data.digits import load_digits_dataset
from gialab.data.faces import load_faces
from gialab.data.image_folder import load_image_folder
from gialab.data.natural import PHOTOS, load_natural
from gialab.errors import GialabError


def check_contract(ds: ImageDataset, shape: tuple[int, int, int], num_classes: int) -> None:
    assert isinstance(ds.spec, DataSpec)
    assert ds.images.dtype == torch.float32 and ds.labels.dtype == torch.int64
    assert ds.images.shape[1:] == shape and ds.spec.shape == shape
    assert ds.images.shape[0] == ds.labels.shape[0] == len(ds) > 0
    assert 0.0 <= float(ds.images.min()) and float(ds.images.max()) <= 1.0
    assert ds.spec.num_classes == len(ds.spec.class_names) == num_classes
    assert 0 <= int(ds.labels.min()) and int(ds.labels.max()) < num_classes
    assert len(ds.spec.mean) == len(ds.spec.std) == shape[0]
    means = ds.images.mean(dim=(0, 2, 3))
    assert torch.allclose(torch.tensor(ds.spec.mean), means, atol=1e-4)
    assert all(0 < s < 1 for s in ds.spec.std)


# --- built-in sets -----------------------------------------------------------------------------


def test_natural_contract() -> None:
    ds = load_natural()
    check_contract(ds, (3, 32, 32), len(PHOTOS))
    assert ds.spec.num_classes >= 10
    assert ds.spec.class_names == PHOTOS
    assert len(ds) == 100 * len(PHOTOS)
    assert torch.equal(ds.labels.bincount(), torch.full((len(PHOTOS),), 100))
    # crops of different photos must actually differ (no flat or duplicated classes)
    per_class = ds.images.view(len(PHOTOS), 100, -1).mean(dim=1)
    assert torch.cdist(per_class, per_class).fill_diagonal_(1.0).min() > 0.01
    assert float(ds.images.flatten(1).std(dim=1).min()) > 0.02


def test_natural_deterministic_per_seed() -> None:
    a, b = load_natural(seed=3, per_class=10), load_natural(seed=3, per_class=10)
    c = load_natural(seed=4, per_class=10)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert len(a) == 10 * len(PHOTOS)


def test_natural_cache_hands_out_independent_tensors() -> None:
    a = load_natural(seed=5, per_class=4)
    before = a.images.clone()
    a.images.zero_()
    assert torch.equal(load_natural(seed=5, per_class=4).images, before)


@pytest.mark.parametrize("per_class", [0, -1, 2.5])
def test_natural_bad_per_class(per_class: object) -> None:
    with pytest.raises(GialabError, match="per_class"):
        load_natural(per_class=per_class)  # type: ignore[arg-type]


def test_faces() -> None:
    ds = load_faces()
    check_contract(ds, (1, 25, 25), 2)
    assert ds.spec.class_names == ("face", "non-face")
    assert len(ds) == 200
    assert torch.equal(ds.labels.bincount(), torch.tensor([100, 100]))


def test_digits() -> None:
    ds = load_digits_dataset()
    check_contract(ds, (1, 8, 8), 10)
    assert len(ds) == 1797
    assert float(ds.images.max()) == 1.0  # 16 maps to 1


# --- CIFAR -------------------------------------------------------------------------------------


def write_fake_cifar(
    root: Path, variant: str, n: int = 6, *, bytes_keys: bool = True
) -> tuple[Path, dict]:
    """A tiny folder in the official layout; returns it and the arrays written per split."""
    rng = np.random.default_rng(0)
    key = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    if variant == "cifar10":
        folder = root / "cifar-10-batches-py"
        splits = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        meta_name, label_key, classes = "batches.meta", "labels", 10
        meta = {key("label_names"): [key(f"c{i}") for i in range(10)]}
    else:
        folder = root / "cifar-100-python"
        splits = {"train": ["train"], "test": ["test"]}
        meta_name, label_key, classes = "meta", "fine_labels", 100
        meta = {
            key("fine_label_names"): [key(f"f{i}") for i in range(100)],
            key("coarse_label_names"): [key(f"k{i}") for i in range(20)],
        }
    folder.mkdir(parents=True)
    written: dict[str, tuple[list, list]] = {}
    for split, files in splits.items():
        xs, ys = [], []
        for name in files:
            data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, classes, size=n)]
            batch = {key("data"): data, key(label_key): labels, key("batch_label"): key(name)}
            if variant == "cifar100":
                batch[key("coarse_labels")] = [v // 5 for v in labels]
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
            xs.append(data)
            ys += labels
        written[split] = (np.concatenate(xs), ys)
    (folder / meta_name).write_bytes(pickle.dumps(meta, protocol=2))
    return folder, written


@pytest.mark.parametrize("variant,classes", [("cifar10", 10), ("cifar100", 100)])
@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar_round_trip(
    tmp_path: Path, variant: str, classes: int, split: str, bytes_keys: bool
) -> None:
    folder, written = write_fake_cifar(tmp_path, variant, bytes_keys=bytes_keys)
    data, labels = written[split]
    for where in (folder, tmp_path):  # the folder itself or its parent
        ds = load_cifar(where, variant, split)  # type: ignore[arg-type]
        check_contract(ds, (3, 32, 32), classes)
        assert ds.spec.name == variant
        assert ds.labels.tolist() == labels
        expected = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255)
        assert torch.equal(ds.images, expected)
    prefix = "c" if variant == "cifar10" else "f"
    assert ds.spec.class_names[:2] == (f"{prefix}0", f"{prefix}1")


def test_cifar_reads_python2_era_numpy_names(tmp_path: Path) -> None:
    """The official files were pickled by Python 2 numpy, which named numpy.core.multiarray."""
    folder, written = write_fake_cifar(tmp_path, "cifar10")
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    raw = pickle.dumps({b"data": data, b"labels": [4, 2]}, protocol=2)
    py2_names = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (folder / "test_batch").write_bytes(py2_names)
    ds = load_cifar(folder, "cifar10", "test")
    assert ds.labels.tolist() == [4, 2]
    assert torch.equal(ds.images.flatten(1), torch.from_numpy(data.astype(np.float32) / 255))


def test_cifar_via_registry(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path, "cifar100")
    assert len(load_dataset("cifar100", path=tmp_path)) == 6


def test_cifar_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(GialabError, match="cifar-10-batches-py") as err:
        load_cifar(tmp_path, "cifar10")
    assert str(tmp_path) in str(err.value)
    with pytest.raises(GialabError, match="not a directory"):
        load_cifar(tmp_path / "nope", "cifar100")
    write_fake_cifar(tmp_path, "cifar10")
    with pytest.raises(GialabError, match="cifar-100-python"):  # right data, wrong variant
        load_cifar(tmp_path, "cifar100")


def test_cifar_missing_batch(tmp_path: Path) -> None:
    folder, _ = write_fake_cifar(tmp_path, "cifar10")
    (folder / "data_batch_3").unlink()
    with pytest.raises(GialabError, match="missing.*data_batch_3"):
        load_cifar(folder, "cifar10")


@pytest.mark.parametrize(
    "content,match",
    [
        (b"not a pickle at all", "not a CIFAR python pickle"),
        (pickle.dumps([1, 2, 3]), "expected a pickled dict"),
        (pickle.dumps({"data": np.zeros((2, 3072), np.uint8)}), "lacks the 'labels' entry"),
        (
            pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}),
            r"expected \(N, 3072\)",
        ),
        (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}), "outside 0..9"),
        (pickle.dumps({"data": Path("x"), "labels": [0]}), "refusing to load"),
    ],
)
def test_cifar_garbled_batch(tmp_path: Path, content: bytes, match: str) -> None:
    folder, _ = write_fake_cifar(tmp_path, "cifar10")
    (folder / "test_batch").write_bytes(content)
    with pytest.raises(GialabError, match=match) as err:
        load_cifar(tmp_path, "cifar10", "test")
    assert "test_batch" in str(err.value) and "\n" not in str(err.value)


def test_cifar_bad_meta_and_args(tmp_path: Path) -> None:
    folder, _ = write_fake_cifar(tmp_path, "cifar10")
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b"]}))
    with pytest.raises(GialabError, match="lists 2 classes"):
        load_cifar(folder, "cifar10")
    with pytest.raises(GialabError, match="variant 'cifar7'"):
        load_cifar(folder, "cifar7")  # type: ignore[arg-type]
    with pytest.raises(GialabError, match="split 'val'"):
        load_cifar(folder, "cifar10", "val")  # type: ignore[arg-type]


# --- image folder ------------------------------------------------------------------------------


def write_image(
    file: Path, size: tuple[int, int], color: tuple[int, int, int], mode: str = "RGB"
) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).convert(mode).save(file)


def test_image_folder_round_trip(tmp_path: Path) -> None:
    write_image(tmp_path / "zebra" / "a.png", (40, 30), (255, 0, 0))
    write_image(tmp_path / "zebra" / "b.bmp", (16, 16), (255, 0, 0))
    write_image(tmp_path / "apple" / "a.png", (32, 32), (0, 0, 255), mode="L")
    write_image(tmp_path / "apple" / "c.gif", (20, 50), (0, 255, 0), mode="P")
    (tmp_path / "apple" / "notes.txt").write_text("ignored")
    ds = load_image_folder(tmp_path, size=16)
    assert ds.spec.class_names == ("apple", "zebra")
    assert ds.images.shape == (4, 3, 16, 16) and ds.images.dtype == torch.float32
    assert ds.labels.tolist() == [0, 0, 1, 1]
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 16, 16)
    assert torch.allclose(ds.images[3], red)
    green = torch.tensor([0.0, 1.0, 0.0])
    assert torch.allclose(ds.images[1, :, 0, 0], green, atol=0.01)  # the palette GIF
    assert float(ds.images[0].std()) < 1e-6  # grayscale copied to three equal channels


def test_image_folder_keep_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        for i in range(2):
            (tmp_path / cls).mkdir(exist_ok=True)
            pixels = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / cls / f"{i}.png")
    ds = load_image_folder(tmp_path, size=None)
    check_contract(ds, (3, 12, 10), 2)
    again = np.asarray(Image.open(tmp_path / "b" / "1.png"))
    expected = torch.from_numpy(again.transpose(2, 0, 1).astype(np.float32) / 255)
    assert torch.equal(ds.images[3], expected)
    assert len(load_dataset("image-folder", path=tmp_path)) == 4


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(GialabError, match="not a directory"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(GialabError, match="no class subfolders"):
        load_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(GialabError, match="empty has no images"):
        load_image_folder(tmp_path)
    write_image(tmp_path / "empty" / "ok.png", (8, 8), (1, 2, 3))
    write_image(tmp_path / "other" / "big.png", (9, 8), (1, 2, 3))
    with pytest.raises(GialabError, match=r"big.png is 9x8 but earlier ones are 8x8"):
        load_image_folder(tmp_path, size=None)
    (tmp_path / "other" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(GialabError, match="cannot read image .*broken.jpg") as err:
        load_image_folder(tmp_path)
    assert "\n" not in str(err.value)
    for size in (0, -3, 2.0):
        with pytest.raises(GialabError, match="size"):
            load_image_folder(tmp_path, size=size)  # type: ignore[arg-type]


# --- registry ----------------------------------------------------------------------------------


def test_registry_names_and_builtins() -> None:
    assert set(DATASETS) == {"natural", "faces", "digits", "cifar10", "cifar100", "image-folder"}
    assert torch.equal(load_dataset("natural", seed=1).images, load_natural(seed=1).images)
    assert load_dataset("faces").spec.shape == (1, 25, 25)
    assert load_dataset("digits").spec.shape == (1, 8, 8)


def test_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(GialabError, match="unknown dataset 'mnist'; valid: cifar10, cifar100, dig"):
        load_dataset("mnist")
    for name in ("cifar10", "cifar100", "image-folder"):
        with pytest.raises(GialabError, match=f"'{name}' requires data_path"):
            load_dataset(name)
    for name in ("natural", "faces", "digits"):
        only = "data_path applies only to cifar10, cifar100, image-folder"
        with pytest.raises(GialabError, match=only):
            load_dataset(name, path=tmp_path)


# --- partitions --------------------------------------------------------------------------------


def assert_disjoint_sized(parts: list[np.ndarray], n: int, per_client: int) -> None:
    flat = np.concatenate(parts)
    assert all(len(p) == per_client and p.dtype == np.int64 for p in parts)
    assert len(np.unique(flat)) == len(flat)
    assert flat.min() >= 0 and flat.max() < n


def test_partition_iid() -> None:
    parts = partition_iid(100, 4, 25, np.random.default_rng(0))
    assert_disjoint_sized(parts, 100, 25)
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))  # exact fit uses everything
    again = partition_iid(100, 4, 25, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not np.array_equal(parts[0], partition_iid(100, 4, 25, np.random.default_rng(1))[0])


def majority_share(parts: list[np.ndarray], labels: np.ndarray) -> float:
    return float(np.mean([np.bincount(labels[p]).max() / len(p) for p in parts]))


def test_partition_dirichlet_skew() -> None:
    labels = np.repeat(np.arange(10), 100)
    rng = np.random.default_rng(0)
    skewed = partition_dirichlet(labels, 20, 20, 0.05, rng)
    assert_disjoint_sized(skewed, len(labels), 20)
    iid = partition_iid(len(labels), 20, 20, np.random.default_rng(0))
    flat = partition_dirichlet(labels, 20, 20, 1000.0, np.random.default_rng(0))
    assert_disjoint_sized(flat, len(labels), 20)
    assert majority_share(skewed, labels) > 0.6
    extreme = partition_dirichlet(labels, 20, 20, 0.01, np.random.default_rng(0))
    assert majority_share(extreme, labels) > 0.8
    assert majority_share(iid, labels) < 0.4 and majority_share(flat, labels) < 0.4


def test_partition_dirichlet_falls_back_when_classes_run_out() -> None:
    labels = np.array([0] * 5 + [1] * 50 + [2] * 45)
    for seed in range(5):
        parts = partition_dirichlet(labels, 10, 10, 0.01, np.random.default_rng(seed))
        assert_disjoint_sized(parts, len(labels), 10)
        assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    # non-contiguous label values are fine
    parts = partition_dirichlet(np.array([7, 3] * 20), 4, 10, 0.5, np.random.default_rng(0))
    assert_disjoint_sized(parts, 40, 10)


def test_partition_errors() -> None:
    rng = np.random.default_rng(0)
    asked = "dataset has 100 examples but 3 clients x 40 per client asks for 120"
    with pytest.raises(GialabError, match=asked):
        partition_iid(100, 3, 40, rng)
    with pytest.raises(GialabError, match="dataset has 10 examples .* asks for 12"):
        partition_dirichlet(np.zeros(10, dtype=np.int64), 2, 6, 1.0, rng)
    zeros = np.zeros(10, dtype=np.int64)
    for alpha in (0.0, -1.0, float("nan"), "big"):
        with pytest.raises(GialabError, match="alpha must be a positive"):
            partition_dirichlet(zeros, 2, 5, alpha, rng)  # type: ignore[arg-type]
    with pytest.raises(GialabError, match="num_clients must be a positive integer"):
        partition_iid(10, 0, 5, rng)
    with pytest.raises(GialabError, match="per_client must be a positive integer"):
        partition_iid(10, 2, 0, rng)
