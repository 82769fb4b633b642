"""The main job's own figures: headline.png (every error on one log axis beside each
verifier's epsilon) and game.png (the forging game's rounds won, attack by verifier)."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

import numpy as np

from .report_md import benign_torch

__all__ = ["figures"]


def figures(r: Dict[str, Any], out: str) -> None:
    """headline.png and game.png (exact_forgery.png and resolution.png are drawn where their
    data is made)."""
    import matplotlib

    matplotlib.use("Agg")
    r["figure_markers"] = {"headline.png": _headline_figure(r, out)}
    _game_figure(r["game"], out)


def _headline_figure(r: Dict[str, Any], out: str) -> List[str]:
    """Draws headline.png; returns the verifiers whose epsilon it marks."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    # every error on one log axis, horizontal bars so every label reads; exact zeros are a
    # marker at the axis' left end labelled "exactly 0" (a log axis has no 0)
    rows = _headline_rows(r)
    pos = [v for _, v, _, _ in rows if v > 0]
    left = 10 ** np.floor(np.log10(min(pos + [e["epsilon"] for e in r.get("verifiers", []) if e["epsilon"] > 0]))) / 10
    fig, ax = plt.subplots(figsize=(11, 0.42 * len(rows) + 3.4))
    _bars(ax, rows, left)
    zeros = _epsilon_marks(ax, r, left)
    ax.set_xscale("log")
    ax.set_xlim(left, max(pos) * 200)
    ax.set_yticks(range(len(rows)), [name for name, _, _, _ in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -1.3)  # room above the first bar for the epsilon-0 marker
    ax.set_xlabel("l2 distance between the recomputed and the logged checkpoint (log scale)")
    handles = [
        Patch(color="tab:green", label="benign reproduction error"),
        Patch(color="tab:red", label="known attack, forgery in the data domain"),
        Patch(facecolor="white", edgecolor="tab:red", hatch="///", label="known attack, OUT of the domain"),
        Patch(facecolor="white", edgecolor="tab:purple", hatch="///", label="exact solver, OUT of the domain"),
    ]
    ax.legend(
        handles=handles + ax.get_legend_handles_labels()[0],
        fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.09),
        ncol=2,
    )
    ax.set_title(
        f"{r['config']['model']} on {r['dataset']['name']}, b = {r['config']['batch']}: benign reproduction error "
        "vs forging attacks\n"
        f"(attacks: median over {max((a['attempts'] for a in r['attacks'].values()), default=0)} sampled steps)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(os.path.join(out, "headline.png"), dpi=110)
    plt.close(fig)
    return [v["name"] for v in r.get("verifiers", []) if v["epsilon"] > 0] + zeros


def _headline_rows(r: Dict[str, Any]) -> List[Tuple[str, float, str, bool]]:
    """(label, error, kind, in the data domain) of each bar: the benign errors, the attacks' and
    the distinct exact forgeries' median errors."""
    rp = r["reproduction"]
    rows = [("largest benign torch error", benign_torch(r), "benign", True)]
    nat = [v["max_error"] for k, v in rp["conditions"].items() if k.startswith(("native", "reproducible"))]
    if nat:
        rows.append(("benign reproduction, exactforge (reproducible path)", max(nat), "benign", True))
    rows += [(f"attack: {m}", a["median_error"], "attack", a["in_domain"]) for m, a in r["attacks"].items()]
    rows += [
        (f"exact: {m}", e["median_error"], "exact", e["in_domain"]) for m, e in r["exact"].items() if e["distinct"]
    ]
    return rows


def _bars(ax: Any, rows: List[Tuple[str, float, str, bool]], left: float) -> None:
    """One horizontal bar per row from the axis' left end; hatched when out of the domain."""
    colors = {"benign": "tab:green", "attack": "tab:red", "exact": "tab:purple"}
    for i, (name, v, kind, dom) in enumerate(rows):
        if v == 0:
            ax.plot([left], [i], marker="o", color=colors[kind], clip_on=False, zorder=3)
            ax.annotate("exactly 0", (left, i), xytext=(8, -3), textcoords="offset points", fontsize=8)
            continue
        ax.barh(
            i,
            v,
            left=left,
            color=colors[kind] if dom else "white",
            edgecolor=colors[kind],
            hatch=None if dom else "///",
            lw=1.2,
        )
        ax.annotate(
            f"{v:.1e}" + ("" if dom else "  OUT of domain"),
            (v, i),
            xytext=(4, -3),
            textcoords="offset points",
            fontsize=7,
        )


def _epsilon_marks(ax: Any, r: Dict[str, Any], left: float) -> List[str]:
    """A vertical line at each positive epsilon, a marker for the epsilon-0 verifiers; returns
    the latter's names."""
    ls = iter(["--", ":", "-.", (0, (5, 5)), (0, (1, 3)), (0, (3, 1, 1, 1))])
    zeros = [ver["name"] for ver in r.get("verifiers", []) if ver["epsilon"] == 0]
    for ver in r.get("verifiers", []):
        if ver["epsilon"] > 0:
            ax.axvline(
                ver["epsilon"], color="k", ls=next(ls), lw=0.9, label=f"epsilon of {ver['name']}: {ver['epsilon']:.1e}"
            )
    if zeros:  # a log axis has no 0: the epsilon-0 verifiers are a marker at its left end
        ax.plot(
            [left],
            [-0.9],
            marker=">",
            color="k",
            ms=9,
            clip_on=False,
            ls="none",
            label="epsilon 0 (" + ", ".join(zeros) + "): only an error of exactly 0 passes",
        )
        ax.annotate(
            "epsilon = 0: " + ", ".join(zeros), (left, -0.9), xytext=(10, -3), textcoords="offset points", fontsize=8
        )
    return zeros


def _game_figure(games: List[Dict[str, Any]], out: str) -> None:
    """Rounds won, attack by verifier, as a table of counts (most cells are 0 of N)."""
    import matplotlib.pyplot as plt

    attacks = list(dict.fromkeys(g["attack"] for g in games))
    cols = list(dict.fromkeys((g["verifier"], g["domain_check"]) for g in games))
    grid = np.full((len(attacks), len(cols)), np.nan)
    text = [["not played"] * len(cols) for _ in attacks]
    for g in games:
        i, j = attacks.index(g["attack"]), cols.index((g["verifier"], g["domain_check"]))
        grid[i, j] = g["win_rate"]
        text[i][j] = f"{g['won']}/{g['rounds']}"
    fig, ax = plt.subplots(figsize=(1.25 * len(cols) + 2.5, 0.5 * len(attacks) + 1.9))
    cmap = plt.get_cmap("Reds").with_extremes(bad="0.92")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for i in range(len(attacks)):
        for j in range(len(cols)):
            ax.text(
                j, i, text[i][j], ha="center", va="center", fontsize=8, color="white" if grid[i, j] > 0.6 else "black"
            )
    ax.set_xticks(
        range(len(cols)), [f"{v}\n{'domain check' if dc else 'NO domain check'}" for v, dc in cols], fontsize=7
    )
    ax.set_yticks(range(len(attacks)), attacks, fontsize=8)
    cb = fig.colorbar(im, ax=ax, fraction=0.03)
    cb.set_label("adversary win rate", fontsize=8)
    ax.set_title("the data forging game: rounds won by the adversary, per verifier", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "game.png"), dpi=110)
    plt.close(fig)
