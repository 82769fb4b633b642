"""Hostile proofs and arguments: each refused with a message naming the file or argument (exit 2
on the command line), never an internal error, and nothing left behind; a checkpoint read
without a second copy of it in memory; mutated real proofs fuzzed through the readers."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from exactforge.cli import main
from exactforge.data import load_dataset
from exactforge.models.zoo import build_model
from exactforge.pol import ProofError, TrainingArgs, import_proof, read_checkpoint, read_proof, write_reference_proof
from exactforge.pol.hyper import stored
from exactforge.trace.safeio import TraceError

DATA = load_dataset("digits")
HALF = [[0.5], [0.5]]


@pytest.fixture(scope="module")
def proof(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pol") / "proof")
    model = build_model("lenet", DATA.shape, 10, seed=0)
    return write_reference_proof(
        out, model, DATA, steps=4, batch_size=16, save_freq=2, lr=0.05, momentum=0.9, milestones=[3], normalize=HALF
    )


def _indices(d, array):
    with open(os.path.join(d, "indices.npy"), "wb") as f:
        np.save(f, array)


def _npz(d):
    with open(os.path.join(d, "indices.npy"), "wb") as f:
        np.savez(f, a=np.zeros((4, 16), np.int64))


def _huge_header(d):
    """A header declaring 2^40 x 16 indices over a file of a few bytes: np.load would allocate them."""
    header = "{'descr': '<i8', 'fortran_order': False, 'shape': (1099511627776, 16), }"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    with open(os.path.join(d, "indices.npy"), "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 64)


def _edit(step, fn):
    def edit(d):
        path = os.path.join(d, f"model_step_{step}")
        ck = torch.load(path, weights_only=True)
        fn(ck)
        torch.save(ck, path)

    return edit


def _first_weight(ck):
    return next(v for v in ck["net"].values() if v.is_floating_point())


def _hard_link(d):
    outside = os.path.join(os.path.dirname(d), "outside")
    shutil.copy(os.path.join(d, "model_step_2"), outside)
    os.remove(os.path.join(d, "model_step_2"))
    os.link(outside, os.path.join(d, "model_step_2"))


def _fifo(d):
    os.remove(os.path.join(d, "model_step_2"))
    os.mkfifo(os.path.join(d, "model_step_2"))


class LongNameToShowThatTorchsMessageIsNotCutAtOneHundredAndSixtyCharactersOrAtEightyCharactersBecauseTheNameOfTheGlobalIsTheUsefulPart:  # noqa: E501
    """Named in full in the refusal: the global a hostile checkpoint names is what the user needs to see."""

    def __reduce__(self):
        return (type(self), ())


HOSTILE = [
    (
        "uint64 indices past 2^63",
        lambda d: _indices(d, np.full((4, 16), 2**63 + 5, np.uint64)),
        "index 9223372036854775813",
    ),
    ("an npz named indices.npy", _npz, "indices.npy is a zip archive"),
    ("a header declaring 2^40 rows", _huge_header, r"indices.npy declares \[1099511627776, 16\]"),
    ("float indices", lambda d: _indices(d, np.zeros((4, 16))), "indices.npy must hold integers, not float64"),
    (
        "a NaN weight",
        _edit(2, lambda ck: _first_weight(ck).view(-1).__setitem__(0, float("nan"))),
        "model_step_2: the tensor 'features.0.weight' holds NaN",
    ),
    (
        "an infinite weight",
        _edit(4, lambda ck: _first_weight(ck).view(-1).__setitem__(3, float("inf"))),
        "model_step_4: the tensor",
    ),
    (
        "an infinite momentum buffer",
        _edit(2, lambda ck: ck["optimizer"]["state"][0]["momentum_buffer"].view(-1).__setitem__(0, float("-inf"))),
        "model_step_2: the optimizer's momentum_buffer of parameter 0 holds NaN or infinite",
    ),
    (
        "two parameter groups",
        _edit(0, lambda ck: ck["optimizer"]["param_groups"].append(dict(ck["optimizer"]["param_groups"][0]))),
        "model_step_0: the optimizer must hold one parameter group",
    ),
    (
        "a text learning rate",
        _edit(0, lambda ck: ck["optimizer"]["param_groups"][0].update(lr="0.05")),
        "model_step_0: the optimizer's lr is '0.05'",
    ),
    (
        "a negative momentum",
        _edit(0, lambda ck: ck["optimizer"]["param_groups"][0].update(momentum=-1.0)),
        "momentum is -1.0, not a number in",
    ),
    (
        "a scheduler of another kind",
        _edit(0, lambda ck: ck["scheduler"].pop("milestones")),
        "the scheduler is not MultiStepLR",
    ),
    ("milestones of text", _edit(0, lambda ck: ck["scheduler"].update(milestones={"3": 1})), "milestones hold '3': 1"),
    ("a hard-linked checkpoint", _hard_link, "model_step_2 has 2 hard links"),
    ("a FIFO checkpoint", _fifo, "model_step_2 is a link, device, FIFO or folder"),
    (
        "a checkpoint naming a long global",
        lambda d: torch.save(
            {
                "net": {
                    "x": LongNameToShowThatTorchsMessageIsNotCutAtOneHundredAndSixtyCharactersOrAtEightyCharactersBecauseTheNameOfTheGlobalIsTheUsefulPart()
                }
            },
            os.path.join(d, "model_step_2"),
        ),  # noqa: E501
        "BecauseTheNameOfTheGlobalIsTheUsefulPart",
    ),
]


@pytest.mark.parametrize("name,edit,match", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_proof_is_refused_naming_what_is_wrong(proof, tmp_path, name, edit, match):
    bad = shutil.copytree(proof, str(tmp_path / "proof"))
    edit(bad)
    out = str(tmp_path / "t")
    with pytest.raises(ProofError, match=match):
        import_proof(bad, out, model="lenet", data=DATA, args=TrainingArgs(normalize=HALF))
    assert not os.path.exists(out)
    assert main(["import-pol", bad, "--out", out, "--model", "lenet", "--quiet"]) == 2
    assert not os.path.exists(out)


def _not_a_module():
    return "a string"


def _raises():
    raise RuntimeError("no such layer")


ARGUMENTS = [
    (["--model-factory", "os:getcwd"], "--model-factory: os:getcwd() returned str, not a torch.nn.Module"),
    ([f"--model-factory={__file__}:_not_a_module"], "returned str, not a torch.nn.Module"),
    ([f"--model-factory={__file__}:_raises"], "raised RuntimeError: no such layer"),
    (["--model", "lenet", "--lr", "1"], "--lr: 1.0 given, but the proof holds 0.05"),
    (["--model", "lenet", "--save-freq", "3"], "--save-freq: 3 given, but the proof's checkpoints are every 2 steps"),
    (["--model", "lenet", "--batch-size", "8"], "--batch-size: 8, but the proof's batches hold 16"),
    (["--model", "lenet", "--preset", "cifar10"], "--preset: 3 means and 3 deviations for data of 1 channel"),
    (["--model", "lenet", "--weight-decay", "0.1"], "--weight-decay: 0.1 given, but the proof holds 0.0"),
]


@pytest.mark.parametrize("argv,message", ARGUMENTS)
def test_an_argument_that_does_not_fit_exits_2_naming_the_flag(proof, tmp_path, capsys, argv, message):
    out = str(tmp_path / "t")
    assert main(["import-pol", proof, "--out", out, "--quiet"] + argv) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(out)


def test_the_out_folder_may_be_empty_never_full(proof, tmp_path, capsys):
    out = tmp_path / "t"
    out.mkdir()
    (out / "mine.txt").write_text("the user's")
    argv = ["import-pol", proof, "--out", str(out), "--model", "lenet", "--quiet"]
    assert main(argv) == 2
    assert f"--out: {out} is not empty" in capsys.readouterr().err and os.listdir(out) == ["mine.txt"]
    os.remove(out / "mine.txt")
    assert main(argv + ["--lr", "1"]) == 2 and os.listdir(out) == []  # a refusal empties it again
    assert main(argv) == 0 and os.path.exists(out / "manifest.json")


def test_a_checkpoint_is_read_without_a_second_copy_in_memory(tmp_path):
    """Python holds no buffer of the file: torch reads each tensor straight into it (its own
    allocations are not traced, a bytes copy of the file would be)."""
    net = {f"w{i}": torch.ones(250_000) for i in range(8)}  # 8 MB
    torch.save({"net": net}, str(tmp_path / "model_step_0"))
    size = os.path.getsize(tmp_path / "model_step_0")
    tracemalloc.start()
    try:
        ck = read_checkpoint(str(tmp_path), 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < size / 8, (peak, size)
    assert float(ck["net"]["w7"].sum()) == 250_000.0


def _mutate(raw: bytes, rng: random.Random) -> bytes:
    b = bytearray(raw)
    kind = rng.choice(["flip", "zero", "truncate", "insert", "splice"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == "zero":
        at, n = rng.randrange(len(b)), rng.randint(1, 64)
        b[at : at + n] = bytes(len(b[at : at + n]))
    elif kind == "truncate":
        del b[rng.randrange(len(b)) :]
    elif kind == "insert":
        at = rng.randrange(len(b) + 1)
        b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    else:
        a, z = sorted(rng.randrange(len(b)) for _ in range(2))
        b[a:z] = bytes(reversed(b[a:z]))
    return bytes(b)


@given(
    name=st.sampled_from(["indices.npy", "model_step_0", "model_step_2", "model_step_4"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_mutated_proof_files_are_read_or_refused_never_an_internal_error(proof, name, seed):
    work = tempfile.mkdtemp()
    try:
        d = shutil.copytree(proof, os.path.join(work, "proof"))
        with open(os.path.join(d, name), "rb") as f:
            raw = f.read()
        with open(os.path.join(d, name), "wb") as f:
            f.write(_mutate(raw, random.Random(seed)))
        try:
            if name == "indices.npy":
                p = read_proof(d)
                assert p.indices.dtype == np.int64 and p.indices.ndim == 2 and p.indices.min() >= 0
            else:
                ck = read_checkpoint(d, int(name.rsplit("_", 1)[1]))
                stored(ck, name)
        except TraceError:  # ProofError: a refusal, with its message
            pass
    finally:
        shutil.rmtree(work)
