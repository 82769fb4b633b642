"""Keyed augmentation: each example's draws are a pure function of (seed, step, example)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exactforge.nn import KeyedAugment


@settings(max_examples=30, deadline=None)
@given(
    st.integers(0, 3),
    st.booleans(),
    st.booleans(),
    st.integers(0, 2**63 - 1),
    st.integers(0, 10**6),
    st.integers(1, 12),
    st.integers(0, 1000),
)
def test_an_example_is_augmented_the_same_wherever_it_sits_in_the_batch(pad, flip, rot, seed, step, batch, s):
    aug = KeyedAugment(crop_padding=pad, hflip=flip, rot90=rot, seed=seed)
    g = torch.Generator().manual_seed(s)
    x = torch.randn(batch, 2, 5, 5, generator=g)
    ex = np.arange(batch) * 7 + 3
    perm = torch.randperm(batch, generator=g).numpy()
    y = aug(x, step=step, examples=ex)
    assert torch.equal(y[perm], aug(x[perm], step=step, examples=ex[perm]))
    assert y.shape == x.shape
    # each output is the input shifted, flipped and turned: its values are a subset of the
    # input's and the zeros of the padding
    for i in range(batch):
        vals = set(y[i].flatten().tolist()) - {0.0}
        assert vals <= set(x[i].flatten().tolist())


def test_the_draws_are_uniform_and_change_with_the_step_and_the_seed():
    aug = KeyedAugment(crop_padding=2, hflip=True, rot90=True, seed=1)
    d = aug.draws(0, np.arange(20000))
    assert abs(d[:, 2].mean() - 0.5) < 0.02
    assert np.bincount(d[:, 0], minlength=5).min() > 3700 and d[:, 0].max() == 4
    assert np.bincount(d[:, 3], minlength=4).min() > 4700
    assert not np.array_equal(d, aug.draws(1, np.arange(20000)))
    assert not np.array_equal(
        d, KeyedAugment(crop_padding=2, hflip=True, rot90=True, seed=2).draws(0, np.arange(20000))
    )


def test_no_draw_leaves_the_batch_as_it_is():
    x = torch.randn(3, 1, 4, 4)
    assert torch.equal(KeyedAugment()(x, step=0, examples=[0, 1, 2]), x)


def test_bad_settings_and_inputs_are_refused_by_name():
    with pytest.raises(ValueError, match="crop_padding"):
        KeyedAugment(crop_padding=-1)
    with pytest.raises(ValueError, match="hflip"):
        KeyedAugment(hflip=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="augment"):
        KeyedAugment.from_dict({"crop_padding": 1, "hflip": True, "rot90": False, "seed": 0, "extra": 1})
    with pytest.raises(ValueError, match="rot90"):
        KeyedAugment(rot90=True)(torch.zeros(2, 1, 3, 4), step=0, examples=[0, 1])
    with pytest.raises(ValueError, match="x:"):
        KeyedAugment(hflip=True)(torch.zeros(2, 12), step=0, examples=[0, 1])
    with pytest.raises(ValueError, match="examples"):
        KeyedAugment(hflip=True)(torch.zeros(2, 1, 3, 3), step=0, examples=[0])
    assert KeyedAugment.from_dict(KeyedAugment(1, True, False, 9).to_dict()) == KeyedAugment(1, True, False, 9)
