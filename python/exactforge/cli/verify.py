"""``exactforge verify``: verify an execution trace."""

from __future__ import annotations

import argparse
from typing import Any

from ..trace.limits import DEFAULT_LIMITS, Limits
from ._common import (
    _count,
    _data_args,
    _executor,
    _given_data,
    _ray_args,
    _sub,
    _thresholds_type,
    factory_model,
    fail,
    import_function,
    say,
    write_json,
)


def _epsilon_type(text: str) -> Any:
    # a bad number reaches verify_trace, which reports it (in --json too)
    if text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        return text


def register(sub: Any) -> None:
    v = _sub(sub, "verify", "verify an execution trace", "verify", json_what="the verification report")
    v.add_argument("trace", help="the trace folder")
    # verify checks its own numbers (verify_trace) so that a bad one still gets a report in --json
    v.add_argument(
        "--epsilon",
        type=_epsilon_type,
        default=0.0,
        help="largest accepted distance (>= 0), or auto: 10 x this machine's benign reproduction error, measured "
        "by recomputing the first segments with batches reordered and on one thread",
    )
    v.add_argument(
        "--distance",
        choices=("l2", "l1", "linf", "cosine", "l2sq", "l2sq_dim"),
        default="l2",
        help="distance between the recomputed and the logged checkpoint",
    )
    v.add_argument(
        "--policy",
        choices=("all", "topq", "random"),
        default="all",
        help="all steps; PoL's top-Q largest updates per epoch; a seeded random sample",
    )
    v.add_argument("--q", type=int, default=1, help="steps per epoch for --policy topq")
    v.add_argument("--fraction", type=float, default=0.1, help="share of segments for --policy random")
    v.add_argument("--seed", type=int, default=0, help="seed of --policy random")
    v.add_argument(
        "--permute-batches", type=int, metavar="SEED", help="recompute with each batch's examples shuffled (same set)"
    )
    v.add_argument("--threads", type=int, help="thread count of the recomputation (1..256)")
    _source_args(v)
    _pol_args(v)
    _check_args(v)
    _ray_args(v, "the segments", checkpoints=True)
    v.set_defaults(func=run)


def _source_args(v: Any) -> None:
    """The verifier's data, model code and bounds."""
    _data_args(
        v,
        None,
        "the verifier's copy of the training data (a trace's own data path is opened only for an imported proof "
        "given neither --dataset nor --data-path: the path of its import, which the output names)",
    )
    v.add_argument(
        "--allow-partial",
        action="store_true",
        help="verify the prefix of an incomplete trace (fewer steps than declared); reported as PARTIAL",
    )
    v.add_argument(
        "--initial-test",
        action="store_true",
        help="test a theta_0 that no declared seed reproduces against its initialisation law (the reference "
        "Proof-of-Learning's Kolmogorov-Smirnov test per layer); a layer that fails it rejects the trace",
    )
    v.add_argument(
        "--max-model-mb",
        type=_count(1, 1 << 22),
        default=DEFAULT_LIMITS.max_checkpoint_bytes >> 20,
        metavar="MB",
        help="the largest model (bytes of one checkpoint's tensors, in MiB) this verifier reads: a trace "
        "declaring more is refused before any checkpoint is read",
    )
    v.add_argument(
        "--lr-lambda",
        metavar="MODULE:FUNCTION",
        help="the function of a LambdaLR or MultiplicativeLR scheduler the trace declares (the verifier's own "
        "code; a trace cannot carry a function), to check the recorded learning rates against it",
    )
    v.add_argument(
        "--model-factory",
        metavar="MODULE:FUNCTION",
        help="a function of the verifier's own code (a module, or path/to/file.py:function) that returns a fresh "
        "instance of a torch trace's model (its class, untrained): the verifier replays the trace through it; "
        "not needed for exactforge's own and zoo models, which the verifier builds itself",
    )


def _pol_args(v: Any) -> None:
    """The Proof-of-Learning reference's verdict beside exactforge's."""
    v.add_argument(
        "--pol-reference",
        choices=("auto", "all", "topq", "off"),
        default="auto",
        help="also give the Proof-of-Learning reference's verdict (its four distances and thresholds, its "
        "initialisation test): over every segment (all), or its top-Q (topq, with --pol-q); auto: every "
        "segment, for imported proofs only",
    )
    v.add_argument(
        "--pol-q", type=_count(1), default=2, help="Q per epoch of --pol-reference topq (the reference's --q)"
    )
    v.add_argument(
        "--pol-epochs",
        type=_count(1),
        metavar="N",
        help="the proof's epochs, over which --pol-reference topq picks its Q segments per epoch (the reference's "
        "--epochs); default: the steps times the batch size over the data set's size, rounded up",
    )
    v.add_argument(
        "--pol-thresholds",
        type=_thresholds_type,
        metavar="L1,L2,LINF,COS",
        help="the reference's thresholds (its --delta): four numbers, or a named set: current (its code today, "
        "commit c286c7c: 1000,10,0.1,0.01) or 51909cc (its first upload: cosine 0.001); default current",
    )
    v.add_argument(
        "--pol-augmentation",
        choices=("crop-flip",),
        help="the proof was trained with augmentation it did not log (the reference's CIFAR loop: random crop "
        "with padding 4 and horizontal flip): also replay its first segments under fresh draws and report the "
        "tolerance an honest replay needs",
    )
    v.add_argument("--pol-draws", type=_count(1, 64), default=4, help="draws per segment of --pol-augmentation")


def _check_args(v: Any) -> None:
    """The checks beside the recomputation, and the verifier's own data they read."""
    v.add_argument(
        "--require",
        metavar="CHECKS",
        help="checks that reject the trace when they fail, comma-separated, or all: vacuous (updates that round "
        "to nothing or stay within epsilon), schedule (rates the declared schedule does not give), domain "
        "(examples off the data's range or grid), known-data (examples not in --known-data), interval "
        "(checkpoints further apart than --max-interval); every check is reported either way",
    )
    v.add_argument(
        "--known-data",
        metavar="DATASET",
        help="a data set the verifier holds itself (a bundled name, or npz/mnist/... with --known-data-path): "
        "every example the recomputed batches use must be one of its examples",
    )
    v.add_argument("--known-data-path", metavar="PATH", help="the file or folder of --known-data")
    v.add_argument(
        "--max-interval", type=_count(1), metavar="K", help="the largest checkpoint interval the verifier accepts"
    )


def _options(args: argparse.Namespace, given: Any = None) -> Any:
    """The command line's VerifyOptions (``given``: the data the command resolved itself)."""
    from ..verify.options import VerifyOptions

    return VerifyOptions(
        epsilon=args.epsilon,
        distance_kind=args.distance,
        policy=args.policy,
        q=args.q,
        fraction=args.fraction,
        seed=args.seed,
        permute_batches=args.permute_batches,
        threads=args.threads,
        dataset=given,
        data_path=None if given else args.data_path,
        progress=not args.quiet,
        allow_partial=args.allow_partial,
        executor=_executor(args),
        initial_test=args.initial_test,
        limits=Limits(max_checkpoint_bytes=args.max_model_mb << 20),
        lr_lambda=import_function(args.lr_lambda, "--lr-lambda") if args.lr_lambda else None,
        reference={"auto": None, "off": False}.get(args.pol_reference, True),
        reference_q=args.pol_q if args.pol_reference == "topq" else None,
        reference_thresholds=args.pol_thresholds,
        reference_epochs=args.pol_epochs,
        require=args.require,
        known_data=_known(args),
        max_interval=args.max_interval,
        model=_model(args.model_factory) if args.model_factory else None,
    )


def run(args: argparse.Namespace) -> int:
    from ..verify.verifier import verify_trace

    given = _imported_data(args)
    rep = verify_trace(args.trace, _options(args, given))
    result = rep.to_dict()
    tolerance = _tolerance(args, rep, given) if args.pol_augmentation and rep.valid else None
    if tolerance is not None:
        result["augmentation_tolerance"] = tolerance.to_dict()
    write_json(args, result)
    if not rep.valid:
        return fail("verify", "invalid", rep.reason)
    say(args, _verdict_line(rep))
    _notes(args, rep)
    if tolerance is not None:
        say(
            args,
            f"unlogged {tolerance.transform}: {tolerance.draws} fresh draws on segments {tolerance.segments[:5]} land "
            f"at l2 {tolerance.l2['min']:.3g} to {tolerance.l2['max']:.3g} from the logged checkpoints: an honest "
            f"replay needs epsilon >= {tolerance.epsilon_needed:.3g}; the reference's thresholds "
            f"{'accept' if tolerance.reference_accepts else 'reject'} them",
        )
    if rep.declared:
        say(args, f"declared by the prover, not verified: {', '.join(rep.declared)}")
    return 0 if rep.accepted else 1


def _tolerance(args: argparse.Namespace, rep: Any, given: Any) -> Any:
    """--pol-augmentation: the tolerance an honest replay under fresh draws needs."""
    from ..verify.reference import augmentation_tolerance

    tolerance = augmentation_tolerance(
        args.trace,
        dataset=given,
        data_path=None if given else args.data_path,
        draws=args.pol_draws,
        thresholds=args.pol_thresholds,
    )
    if rep.augmentation and rep.augmentation.startswith("fresh draws") and rep.steps:
        # this verification replayed under fresh draws too: the epsilon advised must accept
        # its own replay, so that verify --epsilon at the advice accepts the honest proof
        tolerance.epsilon_needed = max(tolerance.epsilon_needed, max(s.error for s in rep.steps))
    return tolerance


def _verdict_line(rep: Any) -> str:
    """The verdict, what was recomputed where, and the largest error against epsilon."""
    verdict = "ACCEPTED" if rep.accepted else "REJECTED"
    failed = sum(not s.passed for s in rep.steps)
    scope = (
        f"PARTIAL trace: steps 0..{rep.num_steps} of {rep.declared_steps if rep.declared_steps else '?'} "
        f"declared, {rep.unverified_tail} recorded step(s) after the last checkpoint not verified; "
        if rep.partial
        else ""
    )
    err = f"{rep.max_error:.6g}" if rep.max_error == rep.max_error else "undefined"
    ex = rep.executor
    where = (
        f" on Ray ({ex['workers']} workers, {ex['tasks']} tasks, {ex['attempts'] - ex['tasks']} retried attempt(s))"
        if ex
        else ""
    )
    res = (
        f"; resolution {rep.resolution:.2g} (gradient changes below it can vanish in float rounding)"
        if rep.resolution is not None
        else ""
    )
    some = (
        f"{rep.checkpoints_checked} checkpoints checked for integrity, {len(rep.steps)} of {rep.total_segments} "
        f"segments recomputed (--policy {rep.policy})"
        if len(rep.steps) < rep.total_segments
        else f"{len(rep.steps)} segment(s) recomputed"
    )
    arith = f", {rep.arithmetic} arithmetic" if rep.arithmetic else ""
    return (
        f"{verdict}: {scope}{some}{where} ({rep.engine}{arith}, {_theta0(rep)}), "
        f"max {rep.distance} error {err}, epsilon {rep.epsilon:g}, {failed} over epsilon{res}"
    )


def _notes(args: argparse.Namespace, rep: Any) -> None:
    """Why a trace was rejected, and what the report says beside the verdict."""
    if not rep.accepted and rep.reason:  # why, and across machines what to do
        say(args, f"reason: {rep.reason}")
    elif rep.machines and rep.machines.get("bound") and rep.epsilon == 0:
        say(
            args,
            "machine-bound: this trace computes with torch's own kernels, so epsilon 0 holds on a machine like the "
            "recording one (a reproducible model's portable arithmetic holds on every CPU)",
        )
    if rep.augmentation:
        say(args, f"augmentation: {rep.augmentation}")
        # a proof trained without the transforms fails every segment under them; a tampered
        # checkpoint or other data fails some, or is told by the hash
        hashed = (rep.reference or {}).get("hash") != "invalid"
        every = bool(rep.steps) and all(not st.passed for st in rep.steps)
        if every and hashed and rep.valid and rep.augmentation.startswith("recovered"):
            say(
                args,
                "a proof trained without the reference's transforms was replayed with them: import it again with "
                "--augmentation none",
            )
    if rep.epsilon_source and rep.epsilon_source != "given":
        say(args, f"epsilon {rep.epsilon:.3g}, set {rep.epsilon_source}")
    if rep.learning_rates and (rep.learning_rates["per_step"] or rep.learning_rates["scheduler"]):
        say(args, _rates(rep.learning_rates))
    if rep.reference:
        say(args, _reference_line(rep.reference))
        for note in rep.reference.get("notes") or []:
            say(args, f"the reference's top-Q: {note}")
    for line in _check_lines(rep):
        say(args, line)


_FACTORY_FIX = (
    "give MODULE:FUNCTION (an importable module) or path/to/file.py:FUNCTION, a function taking no arguments "
    "that returns a fresh torch.nn.Module of the trace's architecture"
)


def _model(spec: str) -> Any:
    return factory_model(spec, _FACTORY_FIX)


def _rates(lr: Any) -> str:
    text = f"learning rates: {lr['per_step']} step(s) with their own rate, replayed as recorded"
    if lr["follows"]:
        return text + f"; they follow the declared {lr['scheduler']}"
    return text + f"; {lr['reason']}"


def _reference_line(ref: Any) -> str:
    dist = ", ".join(
        f"{m} {ref['max_distance'][m]:.3g} (<= {ref['thresholds'][m]:g}, {ref['above'][m]} over)"
        for m in ("l1", "l2", "linf", "cos")
    )
    scope = (
        f"top-{ref['q']} per epoch over {ref['epochs']} epoch(s), {len(ref['segments'])} segments"
        if ref["policy"] == "top-q"
        else "every segment"
    )
    commit = ref.get("thresholds_commit")
    scope += f"; thresholds of its commit {commit}" if commit else "; the thresholds given"
    init = ref.get("initialization")
    init_s = (
        f"; initialisation test {'passed' if init['passed'] else 'FAILED'} (smallest p {init['min_p_value']:.2g})"
        if init
        else ""
    )
    verdict = "ACCEPTS" if ref["accepted"] else "REJECTS"
    return f"the Proof-of-Learning reference {verdict} ({scope}): max {dist}{init_s}; {ref['agreement']}"


def _theta0(rep: Any) -> str:
    """Where theta_0 came from, as far as the verifier could check."""
    if rep.initial_verified:
        return "theta_0 seeded"
    text = f"theta_0 {rep.initial}, unverified"
    if rep.initial_test is not None:
        failed = [t["tensor"] for t in rep.initial_test if not t["passed"]]
        text += (
            f"; initialisation test failed for {', '.join(failed[:3])}"
            if failed
            else f"; initialisation test passed ({len(rep.initial_test)} layers)"
        )
    return text


def _imported_data(args: argparse.Namespace) -> Any:
    """The verifier's data: --dataset's as always and, for an imported proof, --data-path's or,
    given neither, the data at the path of the import the manifest names (said before it is
    read: the path is the prover's word); an imported proof's data is refused naming the flag
    unless its fingerprint is the import's. None: the verifier resolves the trace's data."""
    import os

    from ..data import BUNDLED, load_dataset
    from ..trace.format import validate_manifest
    from ..trace.safeio import TraceError, read_json

    try:
        got = read_json(args.trace, "manifest.json", DEFAULT_LIMITS.manifest_bytes, "manifest")
        man = validate_manifest(got[0]) if got else None
    except (TraceError, ValueError, OSError):
        man = None  # the verifier reports what is wrong with the trace
    if man is None or not isinstance(man.spec.imported, dict):
        return _given_data(args)
    name, stored = man.spec.data.name, man.spec.imported.get("data_path")
    flag = "--data-path" if args.data_path or args.dataset is None else "--dataset"
    if args.dataset is not None:
        data = _given_data(args)
    else:
        path = args.data_path or (stored if name not in BUNDLED else None)
        if path is None:
            return None
        if not args.data_path:
            if not (os.path.isdir(path) or os.path.isfile(path)):  # never a FIFO or device a trace points at
                raise ValueError(
                    f"--data-path: the trace was imported with {name} from {path}, which is no folder or file here; "
                    "give the data with --data-path"
                )
            say(
                args,
                f"data: reading {name} from {path}, the path the trace was imported with (--data-path reads another)",
            )
        try:
            data = load_dataset(name, path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--data-path: cannot read {name} from {path} ({exc})") from None
    if data.fingerprint() != man.spec.data.fingerprint:
        where = f" in {args.data_path or stored}" if flag == "--data-path" else ""
        raise ValueError(
            f"{flag}: the {data.name} data{where} is not the data the proof was imported with (fingerprint "
            f"{data.fingerprint()[:16]}..., the trace's "
            f"{man.spec.data.fingerprint[:16]}...; imported from {stored or 'a path it does not name'}); give the "
            "same training data"
        )
    return data


def _known(args: argparse.Namespace) -> Any:
    if not args.known_data:
        if args.known_data_path:
            raise ValueError("--known-data-path needs --known-data NAME (the data set's kind, e.g. npz)")
        return None
    from ..data import load_dataset

    try:
        return load_dataset(args.known_data, args.known_data_path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--known-data: {exc}") from None


def _check_lines(rep: Any) -> list:
    """One line per check that failed (or was required), each starting with its name."""
    out = []
    req = set(rep.required)

    def mark(name: str, passed: bool) -> str:
        return ("passed" if passed else "FAILED") + (" (required)" if name in req else "")

    v = rep.vacuous
    if v and (not v["passed"] or "vacuous" in req):
        out.append(
            f"vacuous: {mark('vacuous', v['passed'])}: {v['count']} of {len(rep.steps)} recomputed segment(s) "
            f"prove no training (first at steps {v['segments'][:5]}): their logged update changes no coordinate, "
            f"or the recomputed one is within epsilon (smallest {v['smallest_update']:.3g}), so any batch passes "
            "(an infinitesimal-update spoof looks like this)"
            if not v["passed"]
            else f"vacuous: {mark('vacuous', True)}: every recomputed segment moves the model beyond epsilon"
        )
    sc = rep.schedule
    if sc and (not sc["passed"] or "schedule" in req):
        out.append(f"schedule: {mark('schedule', sc['passed'])}: {sc['reason']}")
    d = rep.domain
    if d and (not d["passed"] or "domain" in req):
        out.append(
            f"domain: {mark('domain', d['passed'])}: {d['outside']} of {d['examples']} example(s) used lie "
            f"outside {d['domain']}" + (f" (first {d['first'][:5]})" if d["outside"] else "")
        )
    k = rep.known_data
    if k is not None:
        out.append(
            f"known-data: {mark('known-data', k['passed'])}: {k['unknown']} of {k['examples']} example(s) used are "
            f"not in {k['known']}" + (f" (first {k['first'][:5]})" if k["unknown"] else "")
        )
    iv = rep.interval
    if iv and (not iv["passed"] or "interval" in req or iv["max_interval"] is not None):
        out.append(
            f"interval: {mark('interval', iv['passed'])}: checkpoints at most {iv['largest_gap']} step(s) apart"
            + (f", bound {iv['max_interval']}" if iv["max_interval"] is not None else "")
        )
    return out
