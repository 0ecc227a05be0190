"""LPIPS (Zhang et al., 2018) from a local weights file, never downloaded.

Learned Perceptual Image Patch Similarity compares images in the feature space of a network
trained for vision tasks, with per-channel weights fitted to human similarity judgements; the
survey (section 2.3) names it the notable semantic metric, and GIA papers (Geiping et al.
2020, Yin et al. 2021) report it next to PSNR. Nothing is downloaded: without a weights file
LPIPS is unavailable and callers report None, never an invented number.

The weights file is ONE state dict (``torch.save(dict, path)``) holding
``features.{0,3,6,8,10}.{weight,bias}`` (the conv layers of torchvision's
``alexnet().features``, same indices) and ``lin{0..4}.model.1.weight`` (the lpips package's
1x1 linear heads, shapes (1, C, 1, 1) with C = 64, 192, 384, 256, 256). Other keys
(e.g. ``classifier.*``) are ignored. Loaded with ``torch.load(map_location='cpu',
weights_only=True)``.

Computation (as the lpips package, 'alex' net, version 0.1): inputs in [0, 1] are mapped to
[-1, 1], shifted and scaled per channel by shift (-0.030, -0.088, -0.188) and scale
(0.458, 0.448, 0.450); features are taken after the ReLUs of conv layers 1-5; at each layer
features are unit-normalised over channels, squared differences are weighted by the head
(a 1x1 conv), averaged spatially, and the five layers are summed. Grayscale inputs are
repeated to 3 channels. AlexNet's strided stem needs a side of at least 31 px, so images
whose shorter side is under 32 px are bilinearly resized to 64x64 first (values for such
images are therefore comparable among themselves, not with native-resolution LPIPS).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from gialab.errors import GialabError
from gialab.metrics.image import check_pair

_CHANNELS = (64, 192, 384, 256, 256)
_CONV_INDICES = (0, 3, 6, 8, 10)
_SLICE_ENDS = (2, 5, 8, 10, 12)  # features[0:2], [2:5], [5:8], [8:10], [10:12] end at ReLUs 1..5
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_MIN_SIDE = 32
_UPSAMPLE_TO = 64


def _alexnet_features() -> nn.Sequential:
    """torchvision's ``alexnet().features`` layout, so its state dict keys load unchanged."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=False),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=False),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=False),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=False),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=False),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


class _LinearHead(nn.Module):
    """The lpips package's NetLinLayer: Dropout then a bias-free 1x1 conv to one channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS with an AlexNet trunk; build with :func:`load_lpips`. Call it on (N,C,H,W) in [0,1]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = _alexnet_features()
        for k, c in enumerate(_CHANNELS):
            self.add_module(f"lin{k}", _LinearHead(c))
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def _layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs, start = [], 0
        for end in _SLICE_ENDS:
            for layer in self.features[start:end]:
                x = layer(x)
            outs.append(x)
            start = end
        return outs

    @torch.no_grad()
    def forward(self, recon: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        a, b = (_prepare(t) for t in (recon, truth))
        a = (a * 2 - 1 - self.shift) / self.scale
        b = (b * 2 - 1 - self.shift) / self.scale
        total = torch.zeros(a.shape[0])
        for k, (fa, fb) in enumerate(zip(self._layers(a), self._layers(b))):
            fa = fa / (fa.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            fb = fb / (fb.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            head: _LinearHead = getattr(self, f"lin{k}")
            total = total + head((fa - fb).pow(2)).mean(dim=(2, 3)).flatten()
        return total


def _prepare(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().to(device="cpu", dtype=torch.float32)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if min(x.shape[-2:]) < _MIN_SIDE:
        x = nn.functional.interpolate(x, size=(_UPSAMPLE_TO, _UPSAMPLE_TO), mode="bilinear", align_corners=False)
    return x


def expected_keys() -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor the weights file must contain."""
    ref = LPIPS().state_dict()
    return {k: tuple(v.shape) for k, v in ref.items()}


_CACHE: dict[tuple[str, int, int], LPIPS] = {}


def load_lpips(path: str | os.PathLike[str]) -> LPIPS:
    """Load the LPIPS network from a local state-dict file; GialabError if missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise GialabError(f"LPIPS weights file {str(p)!r} does not exist; give a local state-dict file or no file")
    stat = p.stat()
    key = (str(p.resolve()), stat.st_mtime_ns, stat.st_size)
    if key in _CACHE:
        return _CACHE[key]
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's mistake
        raise GialabError(f"LPIPS weights file {str(p)!r} is not a readable torch state dict ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise GialabError(f"LPIPS weights file {str(p)!r} holds a {type(state).__name__}, expected a state dict")
    want = expected_keys()
    missing = [k for k in want if k not in state]
    if missing:
        raise GialabError(
            f"LPIPS weights file {str(p)!r} lacks {len(missing)} keys (e.g. {', '.join(missing[:3])}); "
            "it needs features.{0,3,6,8,10}.{weight,bias} and lin{0..4}.model.1.weight"
        )
    bad = [k for k, shape in want.items() if not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != shape]
    if bad:
        k = bad[0]
        got = tuple(state[k].shape) if isinstance(state[k], torch.Tensor) else type(state[k]).__name__
        raise GialabError(f"LPIPS weights file {str(p)!r}: {k} has shape {got}, expected {want[k]}")
    net = LPIPS()
    net.load_state_dict({k: state[k].float() for k in want}, strict=True)
    net.eval()
    _CACHE[key] = net
    return net


def lpips_available(path: str | os.PathLike[str] | None) -> bool:
    """True when ``path`` is a loadable LPIPS weights file (False for None, never raises)."""
    if path is None:
        return False
    try:
        load_lpips(path)
    except GialabError:
        return False
    return True


def lpips(recon: torch.Tensor, truth: torch.Tensor, weights: str | os.PathLike[str]) -> torch.Tensor:
    """Per-sample LPIPS distance (N,) with the network from ``weights``; 0 = identical.

    Images must have 1 or 3 channels. Reconstructions containing NaN give NaN."""
    check_pair(recon, truth)
    if recon.shape[1] not in (1, 3):
        raise GialabError(f"LPIPS needs 1- or 3-channel images, got {recon.shape[1]} channels")
    if recon.shape[0] == 0:
        return torch.zeros(0)
    net = load_lpips(weights)
    return net(recon, truth)
