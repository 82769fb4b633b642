"""Figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple

import numpy as np

__all__ = ["plot_forgery", "plot_resolution", "plot_spoofing"]


def _image_shape(d: int) -> Optional[tuple]:
    s = int(math.isqrt(d))
    if s * s == d:
        return (s, s)
    if d % 3 == 0 and math.isqrt(d // 3) ** 2 == d // 3:  # CIFAR-like, channels first
        s = math.isqrt(d // 3)
        return (3, s, s)
    return None


def plot_forgery(
    X: np.ndarray,
    Xf: np.ndarray,
    path: str,
    *,
    n: int = 8,
    title: str = "",
    labels: Optional[Sequence[str]] = None,
    domain: Optional[Tuple[float, float]] = (0.0, 1.0),
    rows: Tuple[str, str] = ("original", "forged"),
    bottom_labels: Optional[Sequence[str]] = None,
) -> str:
    """Original examples (top row) above their forgeries (bottom row), like the papers'
    Figures 12-13. One grey scale for both rows, the data's range ``domain`` (lo, hi): a forged
    pixel above hi is drawn red and one below lo blue, and each forged image is labelled with
    its share of such pixels, so an out-of-domain forgery never passes for a plausible digit.
    Images when the input is a square (or 3-channel square) picture, else line plots of the
    feature vectors with the range shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(X))
    shape = _image_shape(X.shape[1])
    lo, hi = domain if domain is not None else (float(np.min(X)), float(np.max(X)))
    cmap = plt.get_cmap("gray").with_extremes(over="red", under="blue")
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n + 1.2, 3.9), squeeze=False)
    im = None
    for i in range(n):
        for row, data in enumerate((X, Xf)):
            ax = axes[row][i]
            v = np.asarray(data[i], np.float64)
            out = float(np.mean((v < lo) | (v > hi)))
            if shape is None:
                ax.axhspan(lo, hi, color="0.9", zorder=0)
                ax.plot(v, lw=0.8)
            elif len(shape) == 2:
                im = ax.imshow(v.reshape(shape), cmap=cmap, vmin=lo, vmax=hi)
            else:  # colour: out-of-range channels clipped, the share is in the label
                ax.imshow(np.clip((v.reshape(shape).transpose(1, 2, 0) - lo) / (hi - lo), 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 1:
                text = f"{out:.0%} out of range" + (f"\n{bottom_labels[i]}" if bottom_labels is not None else "")
                ax.set_xlabel(text, fontsize=7, color="red" if out else "black")
        axes[0][i].set_title(labels[i] if labels is not None else f"#{i}", fontsize=8)
    axes[0][0].set_ylabel(rows[0])
    axes[1][0].set_ylabel(rows[1])
    if im is not None:
        cb = fig.colorbar(im, ax=axes.ravel().tolist(), extend="both", fraction=0.02, pad=0.01)
        cb.set_label(f"pixel value (red > {hi:g}, blue < {lo:g})", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_resolution(pairs: Sequence[tuple], path: str) -> str:
    """Per parameter coordinate: the resolution ulp(theta_{t+1})/(2 lr) (x) against the float64
    gradient difference of an exact forgery from the true batch (y). Below the diagonal the
    difference can vanish when theta_{t+1} is rounded to float32, so epsilon = 0 cannot see it.
    ``pairs``: (solver, differences, resolutions) per forged step. Exact zeros cannot be drawn
    on a log axis; they are counted in the legend instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    lo, hi = np.inf, 0.0
    colors = {"nullspace": "tab:purple", "error-matrix": "tab:orange"}
    for solver in dict.fromkeys(p[0] for p in pairs):
        d = np.concatenate([p[1] for p in pairs if p[0] == solver])
        r = np.concatenate([p[2] for p in pairs if p[0] == solver])
        nz = d > 0
        below = float(np.mean(d < r))
        ax.scatter(
            r[nz],
            d[nz],
            s=4,
            alpha=0.35,
            color=colors.get(solver, None),
            label=f"{solver}: {below:.1%} of {d.size} coordinates below ({int((~nz).sum())} exactly 0, not drawn)",
        )
        if nz.any():
            lo = min(lo, float(r[nz].min()), float(d[nz].min()))
            hi = max(hi, float(r[nz].max()), float(d[nz].max()))
    if np.isfinite(lo) and hi > 0:
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="difference = resolution")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("resolution ulp(theta_{t+1}) / (2 lr) of the coordinate (float32)")
    ax.set_ylabel("|gradient of forgery - gradient of true batch| (float64)")
    ax.set_title(
        "Exact forgeries vs what epsilon = 0 can see (native logreg verifier):\n"
        "points below the dashed line can vanish in the float32 rounding of theta_{t+1}",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="upper left", markerscale=3)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


_SPOOF_COLORS = ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange")
_VERIFIER_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")


def plot_spoofing(study: dict, path: str, title: str = "") -> str:
    """Where each spoof breaks, one panel per sweep of exactforge.studies.spoofing: against the
    checkpoint interval k (spacing held), the measured dummy spacing (k held) and the interval
    check's bound (spoof held). One line per attack and verifier; a filled marker is a spoof the
    verifier accepted with its checks off, a hollow one a spoof it rejected, a black ring one it
    accepted with every check on too, and a cross marks a failed interval check. Verdicts are the
    point, so nothing is averaged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = study["rows"]
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    order = list(study.get("verifiers") or dict.fromkeys(r["verifier"] for r in rows))
    lines = [(a, v) for a in attacks for v in order if any(r["attack"] == a and r["verifier"] == v for r in rows)]
    sw = study["sweeps"]
    held = sw["max_interval"]["held"]
    panels = [
        ("k", f"(a) checkpoint interval k, {sw['k']['held']['checkpoints']} checkpoints held", "checkpoint interval k"),
        (
            "spacing",
            f"(b) dummy spacing, k = {sw['spacing']['held']['k']} held",
            "measured dummy spacing (l2 between consecutive checkpoints)\nand the number of checkpoints",
        ),
        (
            "max_interval",
            f"(c) interval bound, spoofs of k = {held['k']} held ({held['spoof_steps']} steps)",
            "the interval check's max_interval",
        ),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(17, 0.3 * len(lines) + 2.8), sharey=True)
    for ax, (sweep, head, xlabel) in zip(axes, panels):
        _spoof_panel(ax, [r for r in rows if r["sweep"] == sweep], sweep, lines, attacks, order)
        ax.set_title(head, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(alpha=0.3, which="major")
        ax.tick_params(labelsize=8)
        ax.margins(x=0.15)
    axes[0].set_yticks(range(len(lines)), [f"{a}: {v}" for a, v in lines], fontsize=7)
    axes[0].set_ylim(len(lines) - 0.5, -0.5)
    handles = _spoof_legend(order)
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncol=4, bbox_to_anchor=(0.5, 0.0))
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.225, right=0.98, wspace=0.12, bottom=0.1 + 0.6 / fig.get_figheight(), top=0.92)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _spoof_panel(ax: Any, mine: list, sweep: str, lines: list, attacks: list, order: list) -> None:
    """One sweep's panel: a row per (attack, verifier), each point's verdicts as markers, and one
    labelled tick per sweep point."""
    from matplotlib.ticker import NullFormatter, NullLocator

    for y, (a, v) in enumerate(lines):
        pts = sorted(
            (r[sweep], r["accepted"], r["accepted_with_checks"], "interval" in r["failed_checks"])
            for r in mine
            if (r["attack"], r["verifier"]) == (a, v)
        )
        if not pts:
            continue
        color = _SPOOF_COLORS[attacks.index(a) % len(_SPOOF_COLORS)]
        marker = _VERIFIER_MARKERS[order.index(v) % len(_VERIFIER_MARKERS)]
        ax.plot([p[0] for p in pts], [y] * len(pts), color=color, lw=0.6, alpha=0.5)
        for x, acc, on, gap in pts:
            ax.plot(x, y, marker=marker, ms=7, ls="none", color=color, mfc=color if acc else "white", mew=1.3)
            if on:
                ax.plot(x, y, marker="o", ms=13, ls="none", mfc="none", mec="k", mew=1.2)
            if gap:
                ax.plot(x, y, marker="x", ms=4, ls="none", color="k", mew=0.9)
    ax.set_xscale("log")
    # one labelled tick per sweep point: a log axis' own ticks say nothing about the points
    if sweep == "spacing":
        by_count: dict = {}
        for r in mine:
            by_count.setdefault(r["checkpoints"], []).append(r["spacing"])
        ticks = [(float(np.median(g)), f"{np.median(g):.2g}\n({c})") for c, g in sorted(by_count.items())]
    else:
        ticks = [(float(x), f"{x}") for x in sorted({r[sweep] for r in mine})]
    if ticks:
        ax.set_xticks([t for t, _ in ticks], [lab for _, lab in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _spoof_legend(order: list) -> list:
    """The legend's entries: one marker per verifier, then what fill, hollow, ring and cross say."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker=_VERIFIER_MARKERS[i % len(_VERIFIER_MARKERS)], color="0.3", ls="none", label=v)
        for i, v in enumerate(order)
    ]
    handles += [
        Line2D([], [], marker="o", color="0.3", ls="none", label="filled: accepted, checks off"),
        Line2D([], [], marker="o", color="0.3", mfc="white", ls="none", label="hollow: rejected, checks off"),
        Line2D([], [], marker="o", ms=11, mfc="none", mec="k", ls="none", label="ringed: accepted with every check on"),
        Line2D([], [], marker="x", ms=5, color="k", ls="none", label="cross: the interval check fails"),
    ]
    return handles
