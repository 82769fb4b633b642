"""The re-evaluation's report.md, written from report.json alone: every sentence that states a
number or a verdict computes it from the report's own tables (the test suite's consistency
check, tests/consistency.py, reads it back against them)."""

from __future__ import annotations

import math
from typing import Any, Dict, List

__all__ = ["markdown", "summary_table"]


def benign_torch(report: Dict[str, Any]) -> float:
    """The largest benign torch error of the run: the reproduction study's conditions and the
    recorded torch trace recomputed (as recorded, and with permuted batches on one thread)."""
    vals = [report["reproduction"]["max_benign_torch"]]
    t = report.get("traces", {}).get("torch")
    if t:
        vals += [t["max_error"], t["permuted_1thread_max_error"]]
    return float(max(vals))


def benign_where(report: Dict[str, Any]) -> str:
    """Where the largest benign torch error was measured."""
    rp = report["reproduction"]
    t = report.get("traces", {}).get("torch")
    if t and max(t["max_error"], t["permuted_1thread_max_error"]) > rp["max_benign_torch"]:
        return "the recorded torch trace recomputed with permuted batches on 1 thread"
    return "reproduction study: " + ", ".join(rp.get("calibrated_on", []))


def percent(n: int, total: int) -> str:
    """n / total as a percentage with two significant digits, never 0.00% for a non-zero count."""
    if total <= 0:
        return "n/a"
    p = 100.0 * n / total
    if p == 0 or p >= 1:
        return f"{p:.2f}%"
    return f"{p:.2g}%"


def _resolution_prose(rs: Dict[str, Any], games: List[Dict[str, Any]]) -> str:
    """The resolution section's prose, every count taken from its table and the game's."""
    res = list(dict.fromkeys((g["verifier"], g["resolution"]) for g in games if g.get("resolution") is not None))
    rows = rs["forgeries"]
    passed = sum(f["accepted_at_epsilon_0"] for f in rows)
    below = sum(f["fraction_below_resolution"] == 1.0 for f in rows)
    text = (
        "On float32 checkpoints, a gradient change smaller than about ulp(theta)/(2 lr) can vanish when "
        "theta_{t+1} is rounded, so epsilon = 0 cannot tell such gradients apart. Median resolution: "
        + ("; ".join(f"{v}: {x:.2g}" for v, x in res) or "n/a")
        + ". Exact forgeries have equal real gradients, so their computed gradients differ by rounding alone; "
        f"of the {len(rows)} exact forgeries below, {passed} were accepted at epsilon 0, and {below} have every "
        "coordinate's difference below its resolution."
    )
    off = [g for g in games if not g["domain_check"]]
    for label, mine in (
        ("the epsilon-0 verifiers", [g for g in off if g["epsilon"] == 0]),
        ("the calibrated torch verifiers", [g for g in off if g["epsilon"] > 0]),
    ):
        if mine:
            text += (
                f" Without the domain check the adversary won {sum(g['won'] for g in mine)} of "
                f"{sum(g['rounds'] for g in mine)} game rounds against {label}."
            )
    return text


_SWEEP_X = {"k": ("k", "k"), "spacing": ("spacing", "a spacing of"), "max_interval": ("max_interval", "max_interval")}


def _fmt_x(sweep: str, x: Any) -> str:
    return f"{x:.3g}" if sweep == "spacing" else f"{x}"


def _where_accepted(sweep: str, pts: List[Any]) -> str:
    """Where along a sweep a verifier accepted a spoof (``pts``: (x, accepted), sorted), said as a
    break point where acceptances and rejections do not interleave."""
    key, word = _SWEEP_X[sweep]
    acc = [x for x, a in pts if a]
    rej = [x for x, a in pts if not a]
    if not rej:
        return f"at every {key} of the sweep"
    if max(acc) < min(rej):
        return f"up to {word} {_fmt_x(sweep, max(acc))} and rejected it from {_fmt_x(sweep, min(rej))}"
    if min(acc) > max(rej):
        return f"from {word} {_fmt_x(sweep, min(acc))} and rejected it up to {_fmt_x(sweep, max(rej))}"
    return f"at {key} in {_fmt_list(sweep, acc)} and rejected it at {_fmt_list(sweep, rej)}"


def _fmt_list(sweep: str, xs: List[Any]) -> str:
    return "[" + ", ".join(_fmt_x(sweep, x) for x in xs) + "]"


def _checks_on(rows: List[Dict[str, Any]], attacks: List[str], sweep: str) -> str:
    """What the checks did to one sweep's spoofs: those accepted with every check on, else the
    checks that failed on the spoofs accepted with the checks off."""
    on = [r for r in rows if r["accepted_with_checks"]]
    if on:
        return (
            "With the checks on, accepted: "
            + "; ".join(
                f"{r['attack']} by {r['verifier']} at {_SWEEP_X[sweep][1]} {_fmt_x(sweep, r[sweep])}" for r in on
            )
            + "."
        )
    failing = []
    for a in attacks:
        checks = list(dict.fromkeys(c for r in rows if r["attack"] == a and r["accepted"] for c in r["failed_checks"]))
        if checks:
            failing.append(f"{a} fails {', '.join(checks)}")
    text = "With the checks on, no verifier accepted a spoof of this sweep"
    return text + (": where one was accepted with them off, " + "; ".join(failing) + "." if failing else ".")


def _spoofing_prose(sp: Dict[str, Any]) -> List[str]:
    """Per sweep and attack, which verifier accepted the spoof where: every word from the rows."""
    rows, order = sp["rows"], list(sp["verifiers"])
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    sw = sp["sweeps"]
    heads = {
        "k": f"(a) Checkpoint interval k in {sw['k']['values']}, {sw['k']['held']['checkpoints']} checkpoints held",
        "spacing": f"(b) Dummy spacing: checkpoints in {sw['spacing']['checkpoints']}, k = {sw['spacing']['held']['k']} "
        "held",
    }
    out: List[str] = []
    for sweep, head in heads.items():
        mine = [r for r in rows if r["sweep"] == sweep]
        if not mine:
            continue
        gaps = [r["spacing"] for r in mine]
        out += ["", f"{head} (measured spacing {min(gaps):.3g} to {max(gaps):.3g}), checks off:", ""]
        for a in attacks:
            where: Dict[str, List[str]] = {}  # verifiers that agree along the sweep share one clause
            for v in order:
                pts = sorted(
                    (r[_SWEEP_X[sweep][0]], r["accepted"]) for r in mine if (r["attack"], r["verifier"]) == (a, v)
                )
                if any(acc for _, acc in pts):
                    where.setdefault(_where_accepted(sweep, pts), []).append(v)
            said = [f"{' and '.join(vs)} accepted it {w}" for w, vs in where.items()]
            named = sum(len(vs) for vs in where.values())
            tried = len({r["verifier"] for r in mine if r["attack"] == a})
            if not said:
                out.append(f"- {a}: none of the {tried} verifiers accepted it.")
            else:
                rest = tried - named
                out.append(
                    f"- {a}: " + "; ".join(said) + (f"; the other {rest} rejected it everywhere." if rest else ".")
                )
        out += ["", _checks_on(mine, attacks, sweep)]
    held = sw["max_interval"]["held"]
    mine = [r for r in rows if r["sweep"] == "max_interval"]
    if mine:
        out += [
            "",
            f"(c) The interval check's bound max_interval in {sw['max_interval']['values']}, the spoofs of k = "
            f"{held['k']} ({held['spoof_steps']} steps) held, checks on:",
            "",
        ]
        for a in attacks:
            ra = [r for r in mine if r["attack"] == a]
            fails_at = sorted({r["max_interval"] for r in ra if "interval" in r["failed_checks"]})
            other: Dict[str, List[str]] = {}
            for r in ra:  # the other checks read the spoof's report, which the bound does not change
                other.setdefault(r["engine"], [c for c in r["failed_checks"] if c != "interval"])
            passed: Dict[str, List[int]] = {}
            for r in ra:
                if r["accepted_with_checks"]:
                    passed.setdefault(r["verifier"], []).append(r["max_interval"])
            text = (
                f"- {a}: the interval check fails at max_interval in {fails_at}"
                if fails_at
                else (f"- {a}: the interval check passes at every bound")
            )
            text += "".join(
                f"; on the {e} spoof "
                + (f"{', '.join(cs)} fail{'s' if len(cs) == 1 else ''}" if cs else "no other fails")
                for e, cs in other.items()
            )
            text += (
                "; accepted with every check on by "
                + "; ".join(f"{v} at max_interval in {sorted(b)}" for v, b in passed.items())
                + "."
                if passed
                else "; no verifier accepted it with every check on."
            )
            out.append(text)
    return out


def _spoofing_markdown(sp: Any) -> List[str]:
    """The spoofing study: each spoof against each verifier, with the checks off and on, in three
    sweeps that each vary one variable."""
    out = ["", "## Spoofing: a whole trace for a model one did not train", ""]
    if not sp:
        return out + ["Not measured: the spoofs build FCN traces, which token data has none of."]
    sw = sp["sweeps"]
    held = sw["max_interval"]["held"]
    out += [
        f"Victims: an FCN (100 hidden units) trained {sp['steps']} steps (b = {sp['batch']}) on the native path and on "
        "torch. Each spoof starts from a fresh theta_0 and ends at the victim's final model in k x checkpoints steps, "
        "with a checkpoint every k steps. Its dummy spacing, the mean l2 distance between consecutive logged "
        "checkpoints (measured from its trace), is the error a segment whose update does nothing still reaches; it "
        "follows the number of checkpoints, not k. Each sweep varies one variable with the others held: (a) k in "
        f"{sw['k']['values']} with {sw['k']['held']['checkpoints']} checkpoints; (b) the checkpoints in "
        f"{sw['spacing']['checkpoints']} with k = {sw['spacing']['held']['k']}; (c) the interval check's bound in "
        f"{sw['max_interval']['values']} with the spoofs of k = {held['k']} and {held['checkpoints']} checkpoints. "
        "Each spoof is verified once: the reference's verdicts at both threshold sets and both policies are "
        "computed from that report's per-segment distances. Checks on: vacuous steps, the learning-rate schedule, "
        f"the data's domain, the verifier's own copy of the data, and an interval of at most {sp['max_interval']} "
        "steps (in (c), the sweep's bound).",
        "",
        "Verifiers:",
        "",
    ]
    out += [f"- {v}: {how}." for v, how in sp["verifiers"].items()]
    out += _spoofing_prose(sp)
    out += [
        "",
        "Every distinct spoof of sweeps (a) and (b):",
        "",
        "| verifier | spoofs accepted, checks off | spoofs accepted, checks on |",
        "|---|---|---|",
    ]
    for v, s in sp["success"].items():
        out.append(f"| {v} | {s['accepted']}/{s['tried']} | {s['accepted_with_checks']}/{s['tried']} |")
    out += [
        "",
        "| spoof | k | steps | checkpoints | dummy spacing (l2) | verifier | largest segment error (l2) | "
        "accepted, checks off | checks that fail | accepted, checks on | sweep |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    from .spoofing import distinct_rows

    sweeps_of: Dict[tuple, List[str]] = {}
    for row in sp["rows"]:
        key = (row["attack"], row["engine"], row["k"], row["spoof_steps"], row["verifier"])
        if row["sweep"] != "max_interval":
            sweeps_of.setdefault(key, []).append({"k": "a", "spacing": "b"}[row["sweep"]])
    for row in distinct_rows(sp):
        key = (row["attack"], row["engine"], row["k"], row["spoof_steps"], row["verifier"])
        out.append(
            f"| {row['attack']} | {row['k']} | {row['spoof_steps']} | {row['checkpoints']} | {row['spacing']:.3g} | "
            f"{row['verifier']} | {row['max_error']:.3g} | {'yes' if row['accepted'] else 'no'} | "
            f"{', '.join(row['failed_checks']) or 'none'} | {'yes' if row['accepted_with_checks'] else 'no'} | "
            f"{', '.join(sweeps_of[key])} |"
        )
    out += [
        "",
        f"Sweep (c), the spoofs of k = {held['k']} ({held['spoof_steps']} steps) judged at each bound (the verdicts "
        "with the checks off do not depend on it):",
        "",
        "| spoof | engine | max_interval | checks that fail | accepted, checks off, by | accepted, checks on, by |",
        "|---|---|---|---|---|---|",
    ]
    cells: Dict[tuple, List[Dict[str, Any]]] = {}
    for row in sp["rows"]:
        if row["sweep"] == "max_interval":
            cells.setdefault((row["attack"], row["engine"], row["max_interval"]), []).append(row)
    for (attack, engine, bound), mine in cells.items():
        off = "; ".join(r["verifier"] for r in mine if r["accepted"]) or "none"
        on = "; ".join(r["verifier"] for r in mine if r["accepted_with_checks"]) or "none"
        out.append(
            f"| {attack} | {engine} | {bound} | {', '.join(mine[0]['failed_checks']) or 'none'} | {off} | {on} |"
        )
    fig = sp.get("figure")
    if fig:
        out += ["", f"![{fig['path']}]({fig['path']})", "", f"*{fig['path']}: {fig['caption']}*"]
    return out


def _share(x: float) -> str:
    """A share as a percentage that reads 100% only when it is 1 (rounded down otherwise)."""
    return "100%" if x == 1 else f"{math.floor(x * 1000) / 10:.1f}%"


def _num(x: float) -> str:
    return "0" if x == 0 else f"{x:.2e}"


def _times(e: float, ref: float) -> str:
    """``e`` as a multiple of the benign reproduction error ``ref``, one format everywhere."""
    if not (ref > 0) or e != e:
        return "n/a (no benign error to compare with)" if not (ref > 0) else "n/a"
    if e == 0:
        return "0x (exactly 0)"
    r = e / ref
    return f"{r:,.0f}x" if r >= 10 else f"{r:.2g}x" + (" (below it)" if r < 1 else "")


def _range_text(report: Dict[str, Any]) -> str:
    d = report["dataset"]
    return f"[{d['domain'][0]:g}, {d['domain'][1]:g}]" if d.get("domain") else "no declared value range"


def _domain_text(report: Dict[str, Any]) -> str:
    d = report["dataset"]
    return _range_text(report) + (f" on {d['levels']} levels" if d.get("domain") and d.get("levels") else "")


def _games_of(report: Dict[str, Any], attack: str) -> str:
    rows = [g for g in report["game"] if g["attack"] == attack]
    if not rows:
        return "not played"
    return "; ".join(
        f"{g['verifier']}{'' if g['domain_check'] else ' (no domain check)'}: {g['won']}/{g['rounds']}" for g in rows
    )


def summary_table(report: Dict[str, Any]) -> str:
    """Reproduction error vs each attack's approximation error (the headline); for every attack
    whether its forgeries are in the data's domain and which verifier it beat in the game."""
    rp = report["reproduction"]
    ref = benign_torch(report)
    lines = [
        "| what | error (l2) | vs largest benign torch error | in domain | game: rounds won against |",
        "|---|---|---|---|---|",
    ]
    lines.append(f"| largest benign torch error ({benign_where(report)}) | {ref:.2e} | 1x | - | - |")
    nat = [v["max_error"] for k, v in rp["conditions"].items() if k.startswith(("native", "reproducible"))]
    if nat:
        lines.append(
            f"| benign reproduction, exactforge's reproducible path (permuted batches, 1 thread) | "
            f"{max(nat):.2g} | {_times(max(nat), ref)} | - | - |"
        )
    for v in report.get("verifiers", []):
        lines.append(
            f"| epsilon of verifier {v['name']} | {_num(v['epsilon'])} | {_times(v['epsilon'], ref)} | - | - |"
        )
    for m, a in report["attacks"].items():
        frac = a.get("forging_fraction")
        # the objective's norms are written with bars, which a table cell must escape
        how = f"; forging fraction {frac:.2g}; {a['objective']}".replace("|", "\\|") if frac is not None else ""
        lines.append(
            f"| attack: {m} (median of {a['attempts']} steps{how}) | {a['median_error']:.2e} | "
            f"{_times(a['median_error'], ref)} | {'yes' if a['in_domain'] else 'NO'} | {_games_of(report, m)} |"
        )
    for m, e in report["exact"].items():
        if not e["distinct"]:
            lines.append(f"| exact: {m} | - | the nullspace construction gives no distinct forgery | - | - |")
            continue
        why = []
        if e["off_grid_fraction"]:
            why.append(f"{e['off_grid_fraction']:.0%} of values off the grid")
        if e["in_range_fraction"] is not None and e["in_range_fraction"] < 1:
            why.append(f"{1 - e['in_range_fraction']:.0%} outside {_range_text(report)}")
        if not e["labels_one_hot"]:
            why.append("soft labels")
        dom = "yes" if e["in_domain"] else "NO: " + (", ".join(why) or "outside the domain")
        game_name = m.split(" (")[0] + " (logreg)" if "logreg" in m else m
        lines.append(
            f"| exact: {m} | {e['median_error']:.2e} | {_times(e['median_error'], ref)} | {dom} | "
            f"{_games_of(report, game_name)} |"
        )
    return "\n".join(lines)


def markdown(r: Dict[str, Any]) -> str:
    """report.md of a re-evaluation report."""
    cfg, rp = r["config"], r["reproduction"]
    out = [
        f"# exactforge re-evaluation of data forging: {cfg['model']} on {r['dataset']['name']}"
        + (" (SYNTHETIC data)" if r["dataset"]["synthetic"] else ""),
        "",
        f"Batch size b = {cfg['batch']} for the traces, the attacks and the game (the reproduction study also "
        f"sweeps b in {list(cfg['batch_sizes'])}), {cfg['steps']} steps, {cfg['repeats']} repeats per condition; "
        f"run time {r['seconds']:.0f} s. Every number below was measured in this run, except the "
        "papers' (cited as such at the end). Data domain: " + _domain_text(r) + ". "
        f"Largest benign torch error: {benign_torch(r):.3g} ({benign_where(r)}).",
        "",
        "## Summary",
        "",
        summary_table(r),
        "",
        "## Verifiers",
        "",
        "| verifier | engine | epsilon | how epsilon was set |",
        "|---|---|---|---|",
    ]
    for v in r.get("verifiers", []):
        out.append(f"| {v['name']} | {v['engine']} | {v['epsilon']:.3g} | {v['how']} |")
    out += _traces_markdown(r) + _reproduction_markdown(rp)
    out += [
        "",
        "## The forging game",
        "",
        "| attack | verifier | epsilon | domain check | rounds won |",
        "|---|---|---|---|---|",
    ]
    for g in r["game"]:
        out.append(
            f"| {g['attack']} | {g['verifier']} | {g['epsilon']:.3g} | {'on' if g['domain_check'] else 'off'} | "
            f"{g['won']}/{g['rounds']} |"
        )
    out += _spoofing_markdown(r.get("spoofing"))
    out += _exact_markdown(r)
    out += _theory_markdown(r.get("theory") or {}, r["game"])
    out += ["", "## Published magnitudes (cited from the papers, not measured here)", ""] + [
        f"- {k}: {v}" for k, v in r["papers"].items()
    ]
    env = r.get("environment", {})
    out += ["", "## Figures", "", f"Measured on {env.get('cpu', 'an unnamed CPU')}, {env.get('date', '')}.", ""]
    for f in r.get("figures", []):
        out += [f"![{f}]({f})", "", f"*{f}: {r.get('captions', {}).get(f, '')}*", ""]
    return "\n".join(out) + "\n"


def _traces_markdown(r: Dict[str, Any]) -> List[str]:
    cfg = r["config"]
    out = ["", "## Traces", ""]
    if not r["traces"]:
        out.append(
            f"No traces recorded: {cfg['model']} on {r['dataset']['name']} has no trace path here "
            "(logreg and fcn use the native engine, lenet and vggmini exactforge.nn on images)."
        )
    for eng, t in r["traces"].items():
        out.append(
            f"- {eng} path: verified at epsilon 0: {'accepted' if t['verified_eps0'] else 'rejected'} "
            f"(max error {t['max_error']:.3g}); recomputed with permuted batches on 1 thread: "
            f"{'accepted' if t['permuted_1thread_accepted_eps0'] else 'rejected'} at epsilon 0 "
            f"(max error {t['permuted_1thread_max_error']:.3g})."
        )
    return out


def _reproduction_markdown(rp: Dict[str, Any]) -> List[str]:
    out = ["", "## Benign reproduction errors", "", "| condition | max error | exactly 0 |", "|---|---|---|"]
    for k, v in rp["conditions"].items():
        out.append(f"| {k} | {v['max_error']:.3g} | {v['zero_fraction']:.0%} |")
    out += [
        "",
        f"The torch verifier's epsilon is {rp['epsilon']:.3g}: {rp.get('safety_factor', 10):g} x "
        f"{rp.get('calibration_max', rp['epsilon'] / 10):.3g}, the largest error in the calibration half of "
        f"the repeats (the table's maxima cover all repeats); the held-out half's false-reject rate is "
        f"{rp['false_reject_rate']:.1%}. "
        + (
            "The reproducible path's verifier uses epsilon 0."
            if rp["epsilon_native"] is not None
            else "There is no reproducible path for this model and data, so no epsilon = 0 verifier."
        ),
    ]
    return out


def _exact_markdown(r: Dict[str, Any]) -> List[str]:
    out = ["", "## Exact forgeries: domain violations", ""]
    for m, e in r["exact"].items():
        if not e["distinct"]:
            out.append(
                f"- {m}: the nullspace construction gives no distinct forgery (its family is empty here; other "
                "exact forgeries are not ruled out), so there is nothing to check."
            )
            continue
        grid = (
            "no grid declared"
            if e["off_grid_fraction"] is None
            else f"{e['off_grid_fraction']:.1%} of values off the grid"
        )
        rng = (
            "no declared range"
            if e["in_range_fraction"] is None or not r["dataset"].get("domain")
            else f"{e['in_range_fraction']:.1%} inside {_range_text(r)}"
        )
        out.append(
            f"- {m}: approximation error {e['median_error']:.3g}; {grid}; {rng}; labels "
            f"{'one-hot' if e['labels_one_hot'] else 'soft (not one-hot)'}; "
            f"{'in' if e['in_domain'] else 'OUT of'} the domain."
        )
    if not r["exact"]:
        out.append(
            "No exact solver applies to this model and data (they need logistic regression or an FCN on "
            "non-token data)."
        )
    return out


def _theory_markdown(th: Dict[str, Any], games: Any) -> list:
    out = ["", "## Table 4 re-answered: every batch a true batch", ""]
    t4 = th.get("table4")
    if t4:
        out += [
            f"d = 4 pixels, 3 classes, grey levels q/(v-1) for v in {sorted({c['v'] for c in t4['cells']})}; every "
            f"cell of at most {t4['max_batches']:.3g} batches, "
            f"counted completely and certified ({t4['seconds']:.0f} s). The paper sampled one true batch per cell "
            "and reported none. Larger cells: " + t4["larger_cells"] + ".",
            "",
            "| model | bias | v | b | batches | with a distinct equal-gradient batch | of those non-trivial | "
            "pairs by certificate |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in t4["cells"]:
            cert = ", ".join(f"{n:,} {k}" for k, n in sorted(c["certificates"].items())) or "none"
            out.append(
                f"| {c['model']} | {'yes' if c['bias'] else 'no'} | {c['v']} | {c['b']} | {c['batches']:,} | "
                f"{c['with_forgery']:,} ({percent(c['with_forgery'], c['batches'])}) | {c['nontrivial']:,} | {cert} |"
            )
    rs = th.get("resolution")
    out += ["", "## What epsilon = 0 can see: the native verifier's resolution", ""]
    if not rs:
        return out + ["Not measured: it needs the native logistic-regression verifier (image or tabular data)."]
    out += [_resolution_prose(rs, games), ""]
    out += [
        "| solver | step | max gradient difference | median resolution | coordinates below it | "
        "accepted at epsilon 0 | in domain |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in rs["forgeries"]:
        out.append(
            f"| {f['solver']} | {f['step']} | {f['max_gradient_difference']:.2g} | {f['median_resolution']:.2g} | "
            f"{_share(f['fraction_below_resolution'])} | {'yes' if f['accepted_at_epsilon_0'] else 'no'} | "
            f"{'yes' if f['in_domain'] else 'no'} |"
        )
    return out
