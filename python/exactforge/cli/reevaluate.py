"""``exactforge reevaluate``: the main job: end-to-end re-evaluation of data forging (report folder)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ._common import _SEED, _data_args, _sub, say, write_json


def register(sub: Any) -> None:
    e = _sub(
        sub,
        "reevaluate",
        "the main job: end-to-end re-evaluation of data forging (report folder)",
        json_what="the report (also in --out/report.json)",
    )
    e.add_argument("--quick", action="store_true", help="small budgets (under a minute), for CI")
    e.add_argument("--model", choices=("fcn", "logreg", "lenet", "vggmini"), default="fcn", help="the model studied")
    _data_args(e)
    e.add_argument("--seed", type=_SEED, default=0, help="seed of everything")
    e.add_argument("--out", default="reevaluation", help="folder of the report")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..studies.reevaluate import Config, reevaluate, summary_table

    kw = dict(model=args.model, dataset=args.dataset, data_path=args.data_path, seed=args.seed)
    cfg = Config.quick(**kw) if args.quick else Config(**kw)
    rep = reevaluate(args.out, cfg, progress=not args.quiet)
    say(
        args,
        f"exactforge reevaluate: {cfg.model} on {rep['dataset']['name']}"
        f"{' (synthetic)' if rep['dataset']['synthetic'] else ''}, {rep['seconds']:.0f} s\n",
    )
    say(args, summary_table(rep))
    sp = rep.get("spoofing")
    if sp:
        say(
            args,
            f"\nspoofing ({sp['spoof_steps']} steps, k in {sp['intervals']}): spoofs accepted, checks off / on: "
            + "; ".join(
                f"{v}: {s['accepted']}/{s['tried']} / {s['accepted_with_checks']}/{s['tried']}"
                for v, s in sp["success"].items()
            ),
        )
    wins = [g for g in rep["game"] if g["win_rate"] > 0]
    say(
        args,
        "\nforging game: "
        + (
            "; ".join(
                f"{g['attack']} vs {g['verifier']}"
                f"{'' if g['domain_check'] else ' (no domain check)'}: {g['win_rate']:.0%}"
                for g in wins
            )
            if wins
            else "no attack won a round"
        )
        + f"\nreport: {os.path.join(args.out, 'report.md')}",
    )
    write_json(args, rep)
    return 0
