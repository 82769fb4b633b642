"""The reproduction-error study's figures: errors per checkpoint, the batch-size sweep (the
papers' Figure 2) and the cross-condition matrix; exact zeros are drawn as zeros, never dropped
from a log axis. A report is read by its fields (a ``repro.StudyReport``)."""

from __future__ import annotations

import os
from typing import Any, Dict

import numpy as np

__all__ = ["figures"]


def _zero_panel(fig, grid_spec, ax_main, series, x_label: str, xs_of, log_x: bool = False):
    """Below a log-scale panel, a strip that draws exact zeros as markers (one row per
    series that has any): a broken axis instead of a fake tiny value."""
    zs = [(name, xs) for name, xs in ((n, xs_of(n)) for n in series) if len(xs)]
    if not zs:
        ax_main.set_xlabel(x_label)
        return
    ax0 = fig.add_subplot(grid_spec, sharex=ax_main)
    for k, (name, xs) in enumerate(zs):
        ax0.plot(xs, [k] * len(xs), ls="none", marker="o", ms=4, color=series[name])
    ax0.set_yticks(range(len(zs)), [n for n, _ in zs], fontsize=6)
    ax0.set_ylim(-0.7, len(zs) - 0.3)
    ax0.set_ylabel("exactly 0", fontsize=7)
    ax0.set_xlabel(x_label)
    ax0.spines["top"].set_linestyle((0, (2, 2)))  # the break between the log axis and 0
    if log_x:
        ax0.set_xscale("log")
    import matplotlib.pyplot as plt

    plt.setp(ax_main.get_xticklabels(), visible=False)


def figures(rep: Any, out: str) -> None:
    """errors_per_checkpoint.png, batch_size_sweep.png (the papers' Figure 2) and
    condition_matrix.png; exact zeros are drawn as zeros, never dropped from a log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(rep.conditions)}
    _per_checkpoint_figure(rep, out, colors)
    _batch_size_figure(rep, out, colors)
    if rep.matrix:
        _matrix_figure(rep, out)


def _per_checkpoint_figure(rep: Any, out: str, colors: Dict[str, Any]) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    b = str(max(rep.batch_sizes))
    n_zero = sum(1 for s in rep.conditions.values() if np.any(np.array(s.per_checkpoint.get(b, [])) == 0))
    fig = plt.figure(figsize=(8.5, 4.4 + 0.18 * n_zero))
    gs = fig.add_gridspec(2, 1, height_ratios=[4, 0.35 + 0.25 * n_zero], hspace=0.08)
    ax = fig.add_subplot(gs[0])
    for name, s in rep.conditions.items():
        v = np.array(s.per_checkpoint.get(b, []), dtype=float)
        x = np.arange(len(v))
        ax.plot(x[v > 0], v[v > 0], marker=".", color=colors[name], label=name)
    ax.set_yscale("log")
    ax.set_ylabel("max l2 error over the repeats")
    if rep.epsilon > 0:
        ax.axhline(rep.epsilon, color="k", ls="--", lw=0.8, label=f"calibrated epsilon {rep.epsilon:.1e}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(
        f"{rep.model} on {rep.dataset}, b = {b}: reproduction error of each checkpoint "
        f"({rep.repeats} recomputations per condition)",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    _zero_panel(
        fig,
        gs[1],
        ax,
        colors,
        "step t (theta_{t+1} recomputed from theta_t)",
        lambda n: np.flatnonzero(np.array(rep.conditions[n].per_checkpoint.get(b, []), dtype=float) == 0),
    )
    fig.savefig(os.path.join(out, "errors_per_checkpoint.png"), dpi=110, bbox_inches="tight")
    plt.close(fig)


def _batch_size_figure(rep: Any, out: str, colors: Dict[str, Any]) -> None:
    import matplotlib.pyplot as plt

    bss = sorted(int(x) for x in rep.batch_sizes)
    n_zero = sum(1 for s in rep.conditions.values() if any(v["max_error"] == 0 for v in s.by_batch_size.values()))
    fig = plt.figure(figsize=(7.5, 4.2 + 0.18 * n_zero))
    gs = fig.add_gridspec(2, 1, height_ratios=[4, 0.35 + 0.25 * n_zero], hspace=0.08)
    ax = fig.add_subplot(gs[0])
    for name, s in rep.conditions.items():
        pts = [(x, s.by_batch_size[str(x)]["max_error"]) for x in bss if str(x) in s.by_batch_size]
        nz = [(x, v) for x, v in pts if v > 0]
        if nz:
            ax.plot(*zip(*nz), marker="o", color=colors[name], label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(bss, [str(x) for x in bss])
    ax.set_ylabel("max l2 error")
    ax.set_title(f"{rep.model} on {rep.dataset}: reproduction error vs batch size (the papers' Figure 2)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    _zero_panel(
        fig,
        gs[1],
        ax,
        colors,
        "batch size",
        lambda n: [x for x in bss if rep.conditions[n].by_batch_size.get(str(x), {}).get("max_error") == 0],
        log_x=True,
    )
    if n_zero:
        fig.axes[-1].set_xticks(bss, [str(x) for x in bss])
    fig.savefig(os.path.join(out, "batch_size_sweep.png"), dpi=110, bbox_inches="tight")
    plt.close(fig)


def _matrix_figure(rep: Any, out: str) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    m = np.array(rep.matrix["max_error"], dtype=float)
    fig, ax = plt.subplots(figsize=(1.1 * len(rep.matrix["cols"]) + 2.5, 0.55 * len(rep.matrix["rows"]) + 2.2))
    pos = m[m > 0]
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")  # exact zeros: white cells reading "0"
    norm = LogNorm(vmin=pos.min(), vmax=pos.max()) if pos.size else None
    im = ax.imshow(np.ma.masked_where(m <= 0, m), cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(len(rep.matrix["cols"])), rep.matrix["cols"], rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(rep.matrix["rows"])), rep.matrix["rows"], fontsize=8)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            dark = m[i, j] > 0 and norm is not None and norm(m[i, j]) < 0.5
            ax.text(
                j,
                i,
                "0" if m[i, j] == 0 else f"{m[i, j]:.1e}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "black",
                fontweight="bold" if m[i, j] == 0 else None,
            )
    ax.set_xlabel("verified under")
    ax.set_ylabel("generated under")
    ax.set_title(
        f"max l2 reproduction error, trace generated under one condition and recomputed under another\n"
        f"({rep.matrix['steps']} steps at b = {rep.matrix['batch_size']}; white: exactly 0)",
        fontsize=9,
    )
    if norm is not None:
        fig.colorbar(im, ax=ax, label="max l2 error (log scale)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "condition_matrix.png"), dpi=110)
    plt.close(fig)
