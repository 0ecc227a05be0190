"""The sweep report's plots, as PNG bytes for embedding: recovery vs batch size, quality vs DP noise, privacy-utility.

Every point is a median over the sweep's seeds, as in the matrix table. Image attacks are drawn
by the fraction of samples recovered (or PSNR where the plot is about quality), text attacks by
token accuracy, on their own axes, since the two scales do not compare. A plot with nothing to
draw (a sweep of one batch size still draws points; a sweep without a DP column does not draw the
noise plot) returns None, and the report says what sweep would fill it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from gialab.defenses.registry import defense_classes
from gialab.matrix.cells import DefenseColumn
from gialab.matrix.table import MatrixEntry

DP_DEFENSES = ("dp_local", "dp_sgd", "dp_distributed")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    _pyplot().close(fig)
    return buffer.getvalue()


def _quality(entry: MatrixEntry) -> tuple[str, float | None]:
    """(axis name, value): token accuracy for text, else the fraction recovered."""
    if entry.text:
        return "token accuracy", entry.median("token_accuracy")
    return "fraction recovered", entry.median("fraction_recovered")


def _axes_for(plt: Any, panels: Sequence[str], width: float = 5.0) -> tuple[Any, dict[str, Any]]:
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 3.8), dpi=100, squeeze=False)
    return fig, dict(zip(panels, axes[0], strict=True))


def recovery_vs_batch(matrix: Sequence[MatrixEntry]) -> bytes | None:
    """One panel per attack: the median fraction recovered (token accuracy) against batch size, a line per column."""
    measured = [e for e in matrix if e.runs]
    if not measured:
        return None
    plt = _pyplot()
    attacks = list(dict.fromkeys(e.attack for e in measured))
    fig, panels = _axes_for(plt, attacks, width=4.2)
    for attack, ax in panels.items():
        mine = [e for e in measured if e.attack == attack]
        for column in dict.fromkeys(e.column for e in mine):
            points = sorted((e.batch_size, _quality(e)[1]) for e in mine if e.column == column)
            points = [(b, v) for b, v in points if v is not None]
            if points:
                ax.plot([b for b, _ in points], [v for _, v in points], marker="o", label=column)
        ax.set_title(attack, fontsize=10)
        ax.set_xlabel("batch size")
        ax.set_ylabel(_quality(mine[0])[0])
        ax.set_ylim(-0.05, 1.05)
        if len({e.batch_size for e in mine}) > 1:
            ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def noise_multiplier(config: str | Mapping[str, Any]) -> float | None:
    """A DP defense's noise multiplier as it ran (its default when the column does not set it); None if not DP."""
    name = config if isinstance(config, str) else config["name"]
    if name not in DP_DEFENSES:
        return None
    params = {} if isinstance(config, str) else {k: v for k, v in config.items() if k != "name"}
    return float(defense_classes()[name].Params(**params).noise_multiplier)


def _dp_of(column: DefenseColumn) -> tuple[str, float] | None:
    found = [(d if isinstance(d, str) else d["name"], noise_multiplier(d)) for d in column.defenses]
    dp = [(name, sigma) for name, sigma in found if sigma is not None]
    return dp[0] if len(dp) == 1 else None


def quality_vs_noise(matrix: Sequence[MatrixEntry], columns: Mapping[str, DefenseColumn]) -> bytes | None:
    """Median PSNR (text: token accuracy) against the DP noise multiplier, a line per attack, batch and DP defense.

    Columns holding one DP defense are drawn; the undefended column (``none``) is the dashed level of
    the same colour, since sigma 0 has no place on a log axis.
    """
    lines: dict[tuple[str, int, str, bool], list[tuple[float, float]]] = {}
    for e in matrix:
        dp = _dp_of(columns[e.column]) if e.column in columns else None
        value = e.median("token_accuracy") if e.text else e.median("psnr_mean")
        if dp is None or value is None or dp[1] <= 0:
            continue
        lines.setdefault((e.attack, e.batch_size, dp[0], e.text), []).append((dp[1], value))
    if not lines:
        return None
    plt = _pyplot()
    kinds = [k for k in ("image", "text") if any(key[3] == (k == "text") for key in lines)]
    fig, panels = _axes_for(plt, kinds, width=6.0)
    undefended = {(e.attack, e.batch_size): e for e in matrix if e.column == "none" and e.runs}
    for (attack, batch, defense, text), points in lines.items():
        ax = panels["text" if text else "image"]
        points.sort()
        (line,) = ax.plot([s for s, _ in points], [v for _, v in points], marker="o",
                          label=f"{attack} b{batch} {defense}")
        base = undefended.get((attack, batch))
        level = base and (base.median("token_accuracy") if text else base.median("psnr_mean"))
        if level is not None:
            ax.axhline(level, color=line.get_color(), linestyle="--", linewidth=0.8)
    for kind, ax in panels.items():
        ax.set_xscale("log")
        ax.set_xlabel("DP noise multiplier sigma (noise std = sigma x clip)")
        ax.set_ylabel("median token accuracy" if kind == "text" else "median PSNR (dB)")
        ax.set_title(f"{kind} attacks; dashed: no defense", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def privacy_utility(matrix: Sequence[MatrixEntry], accuracy: Mapping[str, float]) -> bytes | None:
    """Attack recovery against the reference training's accuracy under each defense column, a curve per attack."""
    curves: dict[tuple[str, int, bool], list[tuple[float, float, str]]] = {}
    for e in matrix:
        value = _quality(e)[1]
        if e.column in accuracy and value is not None:
            curves.setdefault((e.attack, e.batch_size, e.text), []).append((accuracy[e.column], value, e.column))
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=100)
    for (attack, batch, text), points in curves.items():
        points.sort()
        metric = "token accuracy" if text else "fraction recovered"
        (line,) = ax.plot([a for a, _, _ in points], [v for _, v, _ in points], marker="o",
                          label=f"{attack} b{batch} ({metric})")
        for a, v, label in points:
            ax.annotate(label, (a, v), textcoords="offset points", xytext=(4, 4), fontsize=7, color=line.get_color())
    ax.set_xlabel("reference FL test accuracy under the defense  [utility: right is better]")
    ax.set_ylabel("attack recovery, median over seeds  [privacy: lower is better]")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)
