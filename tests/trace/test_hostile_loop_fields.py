"""The fields an honest loop adds to a trace (per-step rates, parameter groups, the scheduler's
state, augmentation, accumulation), edited by a prover with every hash rebuilt: each edit gives
an invalid trace or a rejected one, or a report that says what the verifier could not confirm;
never a crash, a hang or an acceptance of other arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import exactforge.nn as xnn
from exactforge.data import load_dataset
from exactforge.trace.record import TraceRecorder
from exactforge.verify import verify_trace

import hostile as H

DATA = load_dataset("digits")
X, Y = torch.from_numpy(DATA.X).reshape(-1, 1, 8, 8), torch.from_numpy(DATA.y)


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("honest") / "t")
    m = model()
    opt = torch.optim.SGD(
        [{"params": list(m[1].parameters())}, {"params": list(m[3].parameters()), "lr": 0.2}], lr=0.05, momentum=0.9
    )
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    aug = xnn.KeyedAugment(crop_padding=1, hflip=True, seed=3)
    rng = np.random.default_rng(0)
    with TraceRecorder(
        out, m, opt, DATA, steps=6, batch_size=8, scheduler=sched, augment=aug, accumulate=2, input_shape=(1, 8, 8)
    ) as rec:
        for _ in range(6):
            idx = rng.choice(len(DATA), 8, replace=False)
            opt.zero_grad()
            for part in np.array_split(idx, 2):
                x = rec.augment(X[torch.from_numpy(part)], part)
                (torch.nn.functional.cross_entropy(m(x), Y[torch.from_numpy(part)]) / 2).backward()
            opt.step()
            sched.step()
            rec.step(idx)
    rep = verify_trace(out, model=model())
    assert rep.accepted and rep.max_error == 0.0 and rep.learning_rates["follows"], rep.reason
    return out


def edited(honest, tmp_path, manifest_edit=None, record_edit=None):
    d = H.copy(honest, str(tmp_path / "t"))
    H.rechain(d, manifest_edit, record_edit)
    return verify_trace(d, model=model())


def _set(path, value):
    def edit(man):
        obj = man
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value

    return edit


MANIFEST_EDITS = {
    "augment removed": (_set(["augment"], None), "rejected"),
    "augment with another seed": (_set(["augment", "seed"], 4), "rejected"),
    "augment with an unknown field": (_set(["augment", "scale"], 2), "invalid"),
    "accumulate 1": (_set(["accumulate"], 1), "invalid"),
    "accumulate 4": (_set(["accumulate"], 4), "rejected"),
    "accumulate larger than the batch": (_set(["accumulate"], 9), "invalid"),
    "a group losing a parameter": (_set(["optimizer", "groups", 1, "params"], [2]), "invalid"),
    "a group's rate changed": (_set(["optimizer", "groups", 1, "lr"], 0.3), "rejected"),
    "groups that disagree with the top level": (_set(["optimizer", "lr"], 0.07), "invalid"),
    "scheduler class from elsewhere": (_set(["scheduler", "class"], "os.system"), "reported"),
    "scheduler state that divides by zero": (_set(["scheduler", "state", "step_size"], 0), "reported"),
    "scheduler state of the wrong type": (_set(["scheduler", "state", "gamma"], "x" * 1000), "reported"),
    "scheduler without a state": (_set(["scheduler", "state"], None), "invalid"),
}


@pytest.mark.parametrize("name", sorted(MANIFEST_EDITS))
def test_an_edited_loop_field_is_caught(honest, tmp_path, name):
    edit, outcome = MANIFEST_EDITS[name]
    rep = edited(honest, tmp_path, manifest_edit=edit)
    if outcome == "invalid":
        assert not rep.valid and rep.reason
    elif outcome == "rejected":
        assert (rep.valid and not rep.accepted) or not rep.valid
    else:  # the rates are replayed as recorded; the report says the schedule could not confirm them
        assert rep.valid and rep.accepted
        assert rep.learning_rates["follows"] is None and rep.learning_rates["reason"]


def test_per_step_rates_the_declared_scheduler_does_not_give_are_reported_or_rejected(honest, tmp_path):
    def rates(i, rec):
        if i == 3:
            rec["lr"] = [0.01, 0.02]

    rep = edited(honest, tmp_path, record_edit=rates)
    # the step replays with the edited rates, which are not the ones that made the checkpoint
    assert rep.valid and not rep.accepted
    assert rep.learning_rates["follows"] is False and rep.learning_rates["first_difference"] == 3


@pytest.mark.parametrize("lr", [[0.1], [0.1, 0.2, 0.3], [0.1, -1.0], [0.1, 1e7], ["0.1", 0.2], [True, 0.2], 1, 0.0])
def test_a_malformed_per_step_rate_is_invalid(honest, tmp_path, lr):
    def edit(i, rec):
        if i == 2:
            rec["lr"] = lr

    rep = edited(honest, tmp_path, record_edit=edit)
    assert not rep.valid and ("lr" in rep.reason or "group" in rep.reason)


def test_the_readers_group_bound_is_the_optimizers():
    from exactforge.models.optim import MAX_GROUPS
    from exactforge.trace.reader import MAX_GROUPS as READER

    assert READER == MAX_GROUPS


def test_a_zero_dimensional_buffer_written_as_one_element_is_invalid(tmp_path):
    """BatchNorm's num_batches_tracked is declared 0-d; a checkpoint holding it as (1,) (the
    same value, the same bytes) is another tensor, whatever the hashes say."""
    from safetensors.numpy import load_file, save_file

    out = str(tmp_path / "bn")
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(), torch.nn.Linear(72, 10)
    )
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    rng = np.random.default_rng(0)
    with TraceRecorder(out, m, opt, DATA, steps=2, batch_size=8, input_shape=(1, 8, 8)) as rec:
        for _ in range(2):
            idx = rng.choice(len(DATA), 8, replace=False)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(X[torch.from_numpy(idx)]), Y[torch.from_numpy(idx)]).backward()
            opt.step()
            rec.step(idx)

    def fresh():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(), torch.nn.Linear(72, 10)
        )

    assert verify_trace(out, model=fresh()).accepted
    import os

    for name in ("00000000", "00000002"):
        d = H.copy(out, str(tmp_path / f"t{name}"))
        path = os.path.join(d, "checkpoints", f"{name}.safetensors")
        tensors = load_file(path)
        tensors["1.num_batches_tracked"] = tensors["1.num_batches_tracked"].reshape(1)
        save_file(tensors, path, metadata={"exactforge_step": str(int(name))})
        H.rechain(d)
        rep = verify_trace(d, model=fresh())
        assert not rep.valid and "num_batches_tracked" in rep.reason, rep.reason
    d = H.copy(out, str(tmp_path / "declared"))

    def one_element(man):
        for ent in man["tensors"]:  # [name, dtype, shape]
            if ent[0] == "1.num_batches_tracked":
                ent[2] = [1]

    H.rechain(d, manifest_edit=one_element)
    rep = verify_trace(d, model=fresh())
    assert not rep.valid and "num_batches_tracked" in rep.reason, rep.reason
