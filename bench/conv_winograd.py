"""Would Winograd convolutions make an Inverting Gradients step faster on this CPU? Per ConvNet layer.

Usage: .venv/bin/python bench/conv_winograd.py [--repeats 10]

Why this exists: issue 3 asks for a step at most 0.7x breaching's. A step is the forward, the
gradient with respect to every weight, and the double backward to the image, and 86% of it is
3x3 convolutions (BENCHMARKS.md). Both tools call the same oneDNN direct convolutions. Winograd's
minimal filtering (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks") computes
the same convolution with 2.25x (F(2x2, 3x3)) or 4x (F(4x4, 3x3)) fewer multiplications: transform
input tiles and filters, multiply pointwise (one batched GEMM per transformed position), transform
back. Written here in differentiable torch ops, so autograd gives its backward and double backward
for free, it is timed against ``F.conv2d`` on each of the ConvNet's layer shapes (batch 1, one
thread), on the step that matters: output -> loss, gradient with respect to the weight (graph kept),
then the gradient of that gradient's sum with respect to the input.

Prints, per layer shape: the relative error of the output and of the step's input gradient against
``F.conv2d``, and milliseconds per step for each implementation.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

# Lavin & Gray's matrices: B^T (input tile), G (filter), A^T (output tile), for m = 2 and m = 4.
WINOGRAD = {
    2: ([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: ([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
         [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
         [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
}
# The ConvNet's (in, out, side) at 32x32, width 64; the last two run after the first 3x3 max-pool.
LAYERS = [(3, 64, 32), (64, 128, 32), (128, 128, 32), (128, 256, 32), (256, 256, 32), (256, 256, 10)]

Conv = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def winograd_conv(m: int) -> Conv:
    """A 3x3, stride 1, padding 1 convolution as F(m x m, 3 x 3) in differentiable torch ops."""
    bt, g, at = (torch.tensor(a, dtype=torch.float64) for a in WINOGRAD[m])
    k_in, k_w, k_out = torch.kron(bt, bt).float(), torch.kron(g, g).float(), torch.kron(at, at).float()
    tile = m + 2

    def conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n, c, h, wd = x.shape
        o = w.shape[0]
        th, tw = -(-h // m), -(-wd // m)
        t = th * tw
        padded = F.pad(x, (1, m * tw + 1 - wd, 1, m * th + 1 - h))
        cols = F.unfold(padded, tile, stride=m).view(n, c, tile * tile, t)
        cols = cols.permute(2, 1, 0, 3).reshape(tile * tile, c * n * t)
        v = (k_in @ cols).view(tile * tile, c, n * t)  # input tiles, transformed
        u = (k_w @ w.reshape(o * c, 9).T).view(tile * tile, o, c)  # filters, transformed
        out = (k_out @ torch.bmm(u, v).view(tile * tile, o * n * t)).view(m, m, o, n, th, tw)
        out = out.permute(3, 2, 4, 0, 5, 1).reshape(n, o, m * th, m * tw)[:, :, :h, :wd]
        return out + b.view(1, -1, 1, 1)

    return conv


def direct(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, w, b, padding=1)


def step(conv: Conv, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The shape of an Inverting Gradients step for one layer: weight gradient, then its input gradient."""
    loss = conv(x, w, b).relu().pow(2).sum()
    (grad_w,) = torch.autograd.grad(loss, w, create_graph=True)
    (grad_x,) = torch.autograd.grad(grad_w.sum(), x)
    return grad_x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    convs = {"oneDNN direct": direct, "Winograd F(2,3)": winograd_conv(2), "Winograd F(4,3)": winograd_conv(4)}
    print("| in | out | side | " + " | ".join(f"{k} ms" for k in convs) + " | output / gradient rel. error F(2,3) | F(4,3) |")
    print("|---|---|---|" + "---|" * len(convs) + "---|---|")
    for c, o, side in LAYERS:
        x = torch.randn(1, c, side, side, requires_grad=True)
        w = (0.05 * torch.randn(o, c, 3, 3)).requires_grad_()
        b = torch.randn(o)
        with torch.no_grad():
            reference = direct(x, w, b)
        reference_grad = step(direct, x, w, b)
        errors = []
        for name in ("Winograd F(2,3)", "Winograd F(4,3)"):
            with torch.no_grad():
                out = convs[name](x, w, b)
            grad = step(convs[name], x, w, b)
            errors.append(f"{float((out - reference).norm() / reference.norm()):.0e} / "
                          f"{float((grad - reference_grad).norm() / reference_grad.norm()):.0e}")
        times = []
        for conv in convs.values():
            for _ in range(3):
                step(conv, x, w, b)
            started = time.perf_counter()
            for _ in range(args.repeats):
                step(conv, x, w, b)
            times.append(1e3 * (time.perf_counter() - started) / args.repeats)
        print(f"| {c} | {o} | {side} | " + " | ".join(f"{t:.1f}" for t in times) + " | " + " | ".join(errors) + " |",
              flush=True)


if __name__ == "__main__":
    main()
