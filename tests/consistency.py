"""Does a re-evaluation report agree with itself? Reads report.md (and report.json for what a
figure shows) and checks every sentence that states a number or a verdict against the report's
own tables: one value per named quantity, counts that add up, a caption with its batch size for
every figure, a marker for every verifier's epsilon on the headline figure.

``check_report`` returns the disagreements found (empty: consistent). The checks read the text,
not the code that wrote it, so a sentence edited by hand, or written from another variable than
its table, is caught."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional

__all__ = ["check_report", "sections", "tables"]


def sections(md: str) -> Dict[str, str]:
    """The text under each '## ' heading, by heading (the part before the first: '')."""
    out: Dict[str, str] = {}
    name = ""
    for line in md.splitlines():
        if line.startswith("## "):
            name = line[3:].strip()
            out[name] = ""
            continue
        out[name] = out.get(name, "") + line + "\n"
    return out


def tables(text: str) -> List[List[Dict[str, str]]]:
    """The markdown tables of ``text``, each a list of rows keyed by the header's cells."""
    found: List[List[Dict[str, str]]] = []
    rows: Optional[List[Dict[str, str]]] = None
    head: Optional[List[str]] = None
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
            if head is None:
                head, rows = cells, []
            elif set(line.replace("|", "").strip()) <= {"-"}:
                continue
            elif rows is not None:
                rows.append(dict(zip(head, cells)))
            continue
        if head is not None and rows is not None:
            found.append(rows)
        head, rows = None, None
    return found


def _close(a: float, b: float, digits: int = 2) -> bool:
    """Equal to the precision of the shorter printing (``digits`` significant digits)."""
    if a == b:
        return True
    return abs(a - b) <= 0.51 * 10 ** (-digits + 1) * max(abs(a), abs(b))


def _game_counts(sec: Dict[str, str]) -> Dict[tuple, tuple]:
    """(attack, verifier, domain check) -> (won, rounds) from the game table."""
    game = tables(sec.get("The forging game", ""))
    out = {}
    for row in game[0] if game else []:
        won, rounds = (int(x) for x in row["rounds won"].split("/"))
        out[(row["attack"], row["verifier"], row["domain check"] == "on")] = (won, rounds, float(row["epsilon"]))
    return out


def _check_epsilons(sec: Dict[str, str], games: Dict[tuple, tuple], problems: List[str]) -> Dict[str, float]:
    vt = tables(sec.get("Verifiers", ""))
    eps = {row["verifier"]: float(row["epsilon"]) for row in (vt[0] if vt else [])}
    for row in tables(sec.get("Summary", ""))[0]:
        m = re.match(r"epsilon of verifier (.+)", row["what"])
        if m and (m.group(1) not in eps or not _close(float(row["error (l2)"]), eps[m.group(1)])):
            problems.append(f"summary: epsilon of {m.group(1)} is {row['error (l2)']}, the verifier table has {eps}")
    for (attack, ver, _), (_, _, e) in games.items():
        if ver in eps and not _close(e, eps[ver]):
            problems.append(f"game: {attack} against {ver} at epsilon {e:g}, the verifier table says {eps[ver]:g}")
    return eps


def _check_benign(md: str, sec: Dict[str, str], problems: List[str]) -> None:
    values = {float(v) for v in re.findall(r"[Ll]argest benign torch error[^|:]*?:\s*([0-9.e+-]+)", md)}
    summary = tables(sec.get("Summary", ""))[0]
    values |= {float(r["error (l2)"]) for r in summary if r["what"].startswith("largest benign torch error")}
    if len(values) != 1:
        problems.append(f"the largest benign torch error is given as {sorted(values)}: one quantity, one value")
        return
    ref = values.pop()
    measured = []
    for row in tables(sec.get("Benign reproduction errors", ""))[0]:
        if row["condition"] in ("baseline", "permute", "threads", "deterministic"):
            measured.append(float(row["max error"]))
    line = re.search(r"torch path: .*?\(max error ([0-9.e+-]+)\).*?\(max error ([0-9.e+-]+)\)", sec.get("Traces", ""))
    if line:
        measured += [float(line.group(1)), float(line.group(2))]
    if measured and not _close(ref, max(measured)):
        problems.append(f"the largest benign torch error {ref:g} is not the largest measured ({max(measured):g})")


def _check_summary_games(sec: Dict[str, str], games: Dict[tuple, tuple], problems: List[str]) -> None:
    for row in tables(sec.get("Summary", ""))[0]:
        cell = row.get("game: rounds won against", "-")
        if cell in ("-", "not played"):
            continue
        attack = re.sub(r"^(attack|exact): ", "", row["what"]).split(" (median")[0]
        for part in cell.split("; "):
            m = re.match(r"(.+?)( \(no domain check\))?: (\d+)/(\d+)$", part)
            if not m:
                problems.append(f"summary: cannot read the game cell {part!r}")
                continue
            key = (attack, m.group(1), m.group(2) is None)
            found = games.get(key)
            if found is None or found[:2] != (int(m.group(3)), int(m.group(4))):
                problems.append(f"summary: {attack} against {m.group(1)} {part!r}, the game table has {found}")


def _check_resolution(sec: Dict[str, str], games: Dict[tuple, tuple], problems: List[str]) -> None:
    text = sec.get("What epsilon = 0 can see: the native verifier's resolution", "")
    rows = tables(text)[0] if tables(text) else []
    m = re.search(r"of the (\d+) exact forgeries below, (\d+) were accepted at epsilon 0, and (\d+) have", text)
    if rows and not m:
        problems.append("resolution: the prose does not state how many forgeries were accepted")
    if m:
        n, acc, below = (int(x) for x in m.groups())
        if n != len(rows) or acc != sum(r["accepted at epsilon 0"] == "yes" for r in rows):
            problems.append(f"resolution: the prose says {acc} of {n} accepted, the table disagrees")
        if below != sum(r["coordinates below it"] == "100%" for r in rows):
            problems.append(f"resolution: the prose says {below} forgeries entirely below, the table disagrees")
    for label, zero in (("the epsilon-0 verifiers", True), ("the calibrated torch verifiers", False)):
        m2 = re.search(rf"adversary won (\d+) of (\d+) game rounds against {label}", text)
        if not m2:
            continue
        mine = [v for (a, ver, dc), v in games.items() if not dc and (v[2] == 0) == zero]
        if (int(m2.group(1)), int(m2.group(2))) != (sum(v[0] for v in mine), sum(v[1] for v in mine)):
            problems.append(f"resolution: rounds won against {label} do not add up to the game table's")
    named = re.search(r"Median resolution: (.*?)\. ", text)
    for ver in re.findall(r"([\w ]+ \(\w+\)): [0-9.e+-]+", named.group(1) if named else ""):
        if not any(k[1] == ver.strip() for k in games):
            problems.append(f"resolution: {ver} is not a verifier of the game")


def _check_spoofing(sec: Dict[str, str], problems: List[str]) -> None:
    t = tables(sec.get("Spoofing: a whole trace for a model one did not train", ""))
    if len(t) < 2:
        return
    for row in t[0]:
        mine = [r for r in t[1] if r["verifier"] == row["verifier"]]
        off = sum(r["accepted, checks off"] == "yes" for r in mine)
        on = sum(r["accepted, checks on"] == "yes" for r in mine)
        if row["spoofs accepted, checks off"] != f"{off}/{len(mine)}":
            problems.append(f"spoofing: {row['verifier']} checks off {row['spoofs accepted, checks off']}")
        if row["spoofs accepted, checks on"] != f"{on}/{len(mine)}":
            problems.append(f"spoofing: {row['verifier']} checks on {row['spoofs accepted, checks on']}")
    for r in t[1]:
        if r["accepted, checks on"] == "yes" and (
            r["accepted, checks off"] != "yes" or r["checks that fail"] != "none"
        ):
            problems.append(f"spoofing: {r['spoof']} k={r['k']} accepted with checks on but not off, or failing one")


def _check_percentages(sec: Dict[str, str], problems: List[str]) -> None:
    for t in tables(sec.get("Table 4 re-answered: every batch a true batch", "")):
        for row in t:
            m = re.match(r"([\d,]+) \(([\d.e-]+)%\)", row.get("with a distinct equal-gradient batch", ""))
            if not m:
                continue
            n, p = int(m.group(1).replace(",", "")), float(m.group(2))
            total = int(row["batches"].replace(",", ""))
            if (n > 0) != (p > 0) or not _close(p, 100.0 * n / total, 2 if p < 1 else 3):
                problems.append(f"Table 4: {row['with a distinct equal-gradient batch']} of {total:,} batches")


def _sizes(text: str, pattern: str) -> set:
    """Batch sizes written as "b = N" or as a list after ``pattern`` ("b in [..]")."""
    out = {int(x) for x in re.findall(r"\bb = (\d+)", text)}
    m = re.search(pattern + r" \[([\d, ]+)\]", text)
    return out | ({int(x) for x in re.findall(r"\d+", m.group(1))} if m else set())


def _check_figures(md: str, report: Optional[Dict[str, Any]], problems: List[str]) -> None:
    sizes = _sizes(sections(md).get("", ""), "sweeps b in")
    figs = sections(md).get("Figures", "")
    for name in re.findall(r"!\[([^\]]+)\]", figs):
        cap = re.search(rf"\*{re.escape(name)}: ([^*]+)\*", figs)
        if not cap:
            problems.append(f"figure {name} has no caption")
            continue
        stated = _sizes(cap.group(1), "b in")
        if not stated:
            problems.append(f"figure {name}: its caption states no batch size")
        elif not stated <= sizes:
            problems.append(f"figure {name}: batch size {sorted(stated - sizes)} is not one the header names")
    if report is not None:
        verifiers = {v["name"] for v in report.get("verifiers", [])}
        drawn = set((report.get("figure_markers") or {}).get("headline.png", []))
        if verifiers - drawn:
            problems.append(f"headline.png: no epsilon marker for {sorted(verifiers - drawn)}")


def check_report(md: str, report: Optional[Dict[str, Any]] = None) -> List[str]:
    """Every disagreement between report.md's prose and its own tables (and, with ``report``,
    its figures' markers); empty when the report agrees with itself."""
    problems: List[str] = []
    sec = sections(md)
    if not tables(sec.get("Summary", "")):
        return ["the report has no summary table"]
    games = _game_counts(sec)
    _check_epsilons(sec, games, problems)
    _check_benign(md, sec, problems)
    _check_summary_games(sec, games, problems)
    _check_resolution(sec, games, problems)
    _check_spoofing(sec, problems)
    _check_percentages(sec, problems)
    _check_figures(md, report, problems)
    return problems
