"""Models: shapes, gradients, determinism, DLG init, FC layout, safe weight loading."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from gialab.errors import GialabError
from gialab.models import (
    MODELS,
    CNN6,
    ConvNet,
    FCNet,
    LeNet,
    ResNet18,
    build_model,
    describe,
    load_weights,
    model_names,
)

SHAPES = [(3, 32, 32), (1, 8, 8), (1, 25, 25)]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_backward(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    num_classes = 10 if shape[0] == 3 else 7
    model = build_model(name, shape, num_classes)
    x = torch.rand(3, *shape)
    y = torch.tensor([0, 1, num_classes - 1])
    logits = model(x)
    assert logits.shape == (3, num_classes)
    loss = nn.functional.cross_entropy(logits, y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert len(grads) == len(list(model.parameters()))
    for g in grads:
        assert g is not None and torch.isfinite(g).all()
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", MODELS)
def test_seeded_build_is_deterministic(name: str) -> None:
    torch.manual_seed(123)
    a = build_model(name, (3, 32, 32), 10).state_dict()
    torch.manual_seed(123)
    b = build_model(name, (3, 32, 32), 10).state_dict()
    torch.manual_seed(124)
    c = build_model(name, (3, 32, 32), 10).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_classes_and_names() -> None:
    torch.manual_seed(0)
    assert model_names() == MODELS == ("lenet", "convnet", "resnet18", "fcnet", "cnn6")
    expected = {"lenet": LeNet, "convnet": ConvNet, "resnet18": ResNet18, "fcnet": FCNet, "cnn6": CNN6}
    for name, cls in expected.items():
        assert isinstance(build_model(name, (1, 8, 8), 10), cls)
    assert "parameters" in describe(LeNet())


def test_lenet_matches_dlg() -> None:
    torch.manual_seed(0)
    model = build_model("lenet", (3, 32, 32), 10)
    assert isinstance(model, LeNet)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (2, 2), (1, 1)]
    assert all(c.out_channels == 12 and c.kernel_size == (5, 5) for c in convs)
    assert sum(isinstance(m, nn.Sigmoid) for m in model.modules()) == 3
    assert model.fc.in_features == 768  # DLG's value for 32x32
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert params.min() >= -0.5 and params.max() <= 0.5
    assert params.abs().max() > 0.45  # not PyTorch's default (much smaller) fan-in range
    assert LeNet((1, 28, 28), 10).fc.in_features == 12 * 7 * 7


def test_convnet_layout() -> None:
    torch.manual_seed(0)
    model = ConvNet((3, 32, 32), 10, width=8)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 16, 32, 32, 32, 32, 32]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 8
    assert model.model.linear.in_features == 32 * 9
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_fcnet_layout() -> None:
    torch.manual_seed(0)
    model = build_model("fcnet", (1, 8, 8), 10)
    assert isinstance(model, FCNet)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 6
    assert all(lin.bias is not None for lin in linears)
    assert isinstance(model.input_layer, nn.Linear)
    assert model.input_layer.in_features == 64 and model.input_layer.out_features == 1000
    assert next(model.children()) is model.input_layer
    assert linears[0] is model.input_layer
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 5
    assert FCNet((1, 8, 8), 10, hidden=16).input_layer.out_features == 16


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(GialabError) as info:
        build_model("vgg", (3, 32, 32), 10)
    message = str(info.value)
    assert "vgg" in message and "\n" not in message
    for name in MODELS:
        assert name in message


def test_bad_shape_and_classes() -> None:
    with pytest.raises(GialabError):
        build_model("lenet", (32, 32), 10)  # type: ignore[arg-type]
    with pytest.raises(GialabError):
        build_model("lenet", (3, 0, 32), 10)
    with pytest.raises(GialabError):
        build_model("lenet", (3, 32, 32), 0)


def test_load_weights_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_model("convnet", (1, 8, 8), 10)
    target = build_model("convnet", (1, 8, 8), 10)
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    load_weights(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key])
    wrapped = tmp_path / "wrapped.pt"
    other = build_model("convnet", (1, 8, 8), 10)
    torch.save({"state_dict": other.state_dict(), "epoch": 3}, wrapped)
    load_weights(target, wrapped)
    assert torch.equal(target.model.conv0.weight, other.model.conv0.weight)


def test_load_weights_shape_mismatch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "w.pt"
    torch.save(build_model("lenet", (3, 32, 32), 10).state_dict(), path)
    model = build_model("lenet", (3, 32, 32), 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(GialabError) as info:
        load_weights(model, path)
    message = str(info.value)
    assert "fc.weight" in message and "(10, 768)" in message and "(5, 768)" in message
    assert "\n" not in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_load_weights_key_mismatch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "w.pt"
    torch.save(build_model("lenet", (1, 8, 8), 10).state_dict(), path)
    with pytest.raises(GialabError) as info:
        load_weights(build_model("fcnet", (1, 8, 8), 10), path)
    message = str(info.value)
    assert "missing" in message and "unexpected" in message and "\n" not in message


def test_load_weights_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GialabError) as info:
        load_weights(LeNet(), tmp_path / "nope.pt")
    assert "not found" in str(info.value)


class _NotATensor:
    pass


def test_load_weights_refuses_arbitrary_pickle(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"fc.weight": _NotATensor()}, path)
    with pytest.raises(GialabError) as info:
        load_weights(LeNet(), path)
    assert "refusing" in str(info.value) and "\n" not in str(info.value)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(_NotATensor(), protocol=2))
    with pytest.raises(GialabError):
        load_weights(LeNet(), plain)


def test_load_weights_garbage_and_non_state_dict(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(GialabError) as info:
        load_weights(LeNet(), garbage)
    assert "\n" not in str(info.value)
    tensor_only = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(GialabError) as info:
        load_weights(LeNet(), tensor_only)
    assert "state_dict" in str(info.value)
