"""What every command shares: argument types that refuse a bad value before anything runs,
the --json/--quiet conventions, the data and Ray options, one error format."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, NoReturn, Optional

from ..report import jsonio as _json


def _thresholds_type(text: str) -> Any:
    """--pol-thresholds: a named set of the reference's thresholds or four numbers, checked by
    the parser (exit 2 naming the flag); the text is passed on as given."""
    from ..verify.reference import parse_thresholds

    try:
        parse_thresholds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def factory_model(spec: str, fix: str) -> Any:
    """The model ``--model-factory MODULE:FUNCTION`` (or ``path/to/file.py:FUNCTION``) builds:
    the verifier's own code, called with no arguments once; ValueError naming the flag, ending
    with ``fix`` where what it names or returns is not a model."""
    import torch

    try:
        fn = import_function(spec, "--model-factory")
    except ValueError as exc:
        raise ValueError(f"{exc}; {fix}") from None
    try:
        model = fn()
    except Exception as exc:  # noqa: BLE001 - the user's code: its failure is reported with the flag
        raise ValueError(f"--model-factory: {spec}() raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"--model-factory: {spec}() returned {type(model).__name__}, not a torch.nn.Module; {fix}")
    return model


def _count(lo: int = 1, hi: Optional[int] = None):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"expected an integer in {lo}..{hi if hi is not None else 'inf'}, got {v}")
        return v

    parse.__name__ = "integer"
    return parse


def _real(lo: float = 0.0, hi: float = math.inf, *, lo_open: bool = False):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v) or v < lo or (lo_open and v == lo) or v > hi:
            lo_s = f"({lo:g}" if lo_open else f"[{lo:g}"
            raise argparse.ArgumentTypeError(f"expected a finite number in {lo_s}, {hi:g}], got {text}")
        return v

    parse.__name__ = "number"
    return parse


def _epsilon_or_auto(text: str):
    return "auto" if text == "auto" else _real(0.0)(text)


_epsilon_or_auto.__name__ = "epsilon"
_SEED = _count(0, 2**63 - 1)
_POSITIVE = _real(0.0, lo_open=True)
_FRACTION = _real(0.0, 1.0, lo_open=True)


def _threads_type():
    from .. import MAX_THREADS

    return _count(1, MAX_THREADS)


def say(args: argparse.Namespace, text: str) -> None:
    """A command's human-readable output: on stdout, or on stderr when ``--json -`` puts the
    JSON there (so that standard output stays one JSON document)."""
    print(text, file=sys.stderr if getattr(args, "json", None) == "-" else sys.stdout, flush=True)


def write_json(args: argparse.Namespace, result: Any) -> None:
    """``--json FILE``: the result as JSON (atomically); ``--json -``: on standard output."""
    if getattr(args, "json", None) == "-":
        sys.stdout.write(_json.dumps(result) + "\n")
        sys.stdout.flush()
    else:
        _json.write(args.json, result)


def import_function(spec: str, flag: str) -> Any:
    """``MODULE:FUNCTION`` or ``path/to/file.py:FUNCTION`` from the caller's own environment (the
    verifier's code, never the trace's); ValueError naming the flag when it cannot be imported
    or called."""
    import importlib
    import importlib.util
    import os

    module, _, name = spec.rpartition(":")
    if not module or not name:
        raise ValueError(f"{flag}: expected MODULE:FUNCTION or path/to/file.py:FUNCTION, got {spec!r}")
    try:
        if module.endswith(".py") or "/" in module or os.sep in module:
            if not os.path.isfile(module):
                raise ImportError(f"no file {module}")
            unique = "_exactforge_user_" + os.path.splitext(os.path.basename(module))[0]
            found = importlib.util.spec_from_file_location(unique, module)
            if found is None or found.loader is None:
                raise ImportError(f"{module} is not a Python file")
            loaded = importlib.util.module_from_spec(found)
            sys.modules[unique] = loaded  # so that the classes it defines resolve (pickling, dataclasses)
            found.loader.exec_module(loaded)
        else:
            loaded = importlib.import_module(module)
        fn = getattr(loaded, name)
    except (ImportError, AttributeError, ValueError, SyntaxError) as exc:
        raise ValueError(f"{flag}: cannot import {spec!r} ({exc})") from None
    if not callable(fn):
        raise ValueError(f"{flag}: {spec!r} is not callable")
    return fn


def fail(command: Optional[str], kind: str, message: Any) -> int:
    """The one error line of every refusal: ``exactforge COMMAND: KIND: MESSAGE`` on stderr; exit 2."""
    print(f"exactforge{' ' + command if command else ''}: {kind}: {message}", file=sys.stderr)
    return 2


class Parser(argparse.ArgumentParser):
    """argparse with exactforge's error line instead of a usage block: ``exactforge train:
    error: argument --steps: ...`` and where to find the usage."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.split(" ", 1)[1] if " " in self.prog else None
        fail(command, "error", f"{message} (see '{self.prog} --help')")
        sys.exit(2)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown for every option (argparse's own formatter skips options without help)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" not in text
            and action.option_strings
            and not (action.default is None or action.default is False or action.default == argparse.SUPPRESS)
        ):
            text += " (default: %(default)s)"
        return text

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None:
            action.help = ""  # so that the default is printed for it too
        return super()._format_action(action)


_EXITS = {
    "done": "exit codes: 0 done, 2 invalid input (a bad argument, file or trace; the reason on stderr)",
    "verify": "exit codes: 0 accepted, 1 rejected (recomputed, a checkpoint farther than epsilon), 2 invalid input "
    "(a bad argument, data set or trace; the reason on stderr and in --json)",
}


def _data_choices():
    from ..data import DATASETS

    return DATASETS + ("npz",)


def _sub(sub, name: str, help_: str, exits: str = "done", *, json_what: str = "the result") -> argparse.ArgumentParser:
    """A subcommand with the conventions every command shares: --json FILE, --quiet, defaults in
    --help, exit codes in the epilog."""
    p = sub.add_parser(name, help=help_, description=help_, formatter_class=_Formatter, epilog=_EXITS[exits])
    p.add_argument(
        "--json",
        metavar="FILE",
        help=f"also write {json_what} as JSON (undefined numbers are null); - writes it to standard "
        "output and the summary to standard error",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
    return p


def _data_args(p: argparse.ArgumentParser, default: Optional[str] = "digits", what: str = "training data") -> None:
    p.add_argument(
        "--dataset",
        default=default,
        choices=_data_choices(),
        help=f"{what}"
        + ("" if default else " (default: the one the trace names)")
        + "; npz: your own arrays X, y in --data-path FILE.npz (optional lo, hi, levels: the domain)",
    )
    p.add_argument(
        "--data-path",
        help="local files of mnist, cifar10, cifar100, adult or imdb (a folder; for mnist and cifar also "
        "torchvision's root, e.g. ./data, holding MNIST/raw, cifar-10-batches-py or cifar-100-python), "
        "or the .npz file of --dataset npz",
    )


def _ray_args(p: argparse.ArgumentParser, what: str, checkpoints: bool = False) -> None:
    p.add_argument(
        "--ray",
        metavar="ADDRESS|local",
        help=f"run {what} as Ray tasks: 'local' starts Ray on this machine, otherwise a cluster's "
        f'address (auto, HOST:PORT, ray://HOST:10001); needs pip install "exactforge[ray]"',
    )
    p.add_argument("--ray-cpus", type=_count(1, 4096), help="CPUs of the local Ray instance (none given: all)")
    p.add_argument(
        "--ray-retries",
        type=_count(0, 100),
        default=3,
        help="Ray's retries of a task whose worker died; a task still lost makes the result invalid",
    )
    p.add_argument(
        "--ray-timeout",
        type=_real(0.0, 3600.0, lo_open=True),
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for a cluster at --ray ADDRESS before giving up (exit 2)",
    )
    if checkpoints:
        p.add_argument(
            "--ray-checkpoints",
            choices=("auto", "shared", "ship"),
            default="auto",
            help="workers read the trace folder (shared: the same path on every node) or get each "
            "checkpoint's bytes from the object store (ship); auto: shared for local, else ship",
        )


def _given_data(args: argparse.Namespace):
    """The data set named by --dataset (loaded by the verifier itself), or None: the trace's."""
    if getattr(args, "dataset", None) is None:
        return None
    from ..data import load_dataset

    return load_dataset(args.dataset, args.data_path)


def _executor(args: argparse.Namespace):
    """The RayExecutor of --ray (None without it); exit 2 naming the install command without Ray."""
    if not getattr(args, "ray", None):
        return None
    from ..verify.ray import RayExecutor, require_ray

    try:
        require_ray()
    except ImportError as exc:
        raise ValueError(f"--ray: {exc}") from None
    if args.ray != "local" and args.ray_cpus is not None:
        raise ValueError("--ray-cpus: sets the size of a local Ray instance (--ray local); a cluster has its own")
    return RayExecutor(
        args.ray,
        num_cpus=args.ray_cpus,
        max_retries=args.ray_retries,
        checkpoints=getattr(args, "ray_checkpoints", "auto"),
        connect_timeout=args.ray_timeout,
    )
