"""Where theta_0 came from. A trace whose initialisation the verifier can recompute (a seed
declared for an exactforge model) is checked bit for bit; any other theta_0 is "given" and
unverified. For those, the reference Proof-of-Learning's test is offered: a Kolmogorov-Smirnov
test of each layer's weights against the law they are initialised with, which tells a freshly
initialised model from one that was trained before its trace began (it is evidence, not proof:
weights drawn from the law by someone who chose among many draws pass it too)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

import numpy as np

__all__ = ["LayerTest", "initial_law_test", "ALPHA"]

#: the significance level below which a layer's weights are taken not to be freshly drawn
ALPHA = 0.01


@dataclass
class LayerTest:
    tensor: str
    law: str  # "uniform(+-b)" or "normal(0, s)"
    fan_in: int
    statistic: float
    p_value: float
    passed: bool

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _test(name: str, values: np.ndarray, law: str, scale: float, fan_in: int) -> LayerTest:
    from scipy import stats

    x = np.asarray(values, np.float64).ravel()
    if law == "uniform":
        res = stats.kstest(x, "uniform", args=(-scale, 2 * scale))
        shown = f"uniform(+-{scale:.3g})"
    else:
        res = stats.kstest(x, "norm", args=(0.0, scale))
        shown = f"normal(0, {scale:.3g})"
    p = float(res.pvalue)
    return LayerTest(name, shown, fan_in, float(res.statistic), p, p >= ALPHA)


def initial_law_test(theta0: Dict[str, np.ndarray], model: Any = None, spec: Any = None) -> List[LayerTest]:
    """Each layer of theta_0 against its initialisation law: for exactforge's models the law
    their spec names (uniform or Gaussian with 1/sqrt(fan_in)); for a torch model, the default
    of ``nn.Linear`` and ``nn.Conv*`` (weights and biases uniform within 1/sqrt(fan_in)), the
    other layers (normalisation, embeddings, attention) being left out."""
    out: List[LayerTest] = []
    if spec is not None and model is None:  # the native layout: W_i is fan_in x fan_out
        for i in range(1, spec.num_layers + 1):
            fan_in = int(spec.sizes[i - 1])
            law = "normal" if getattr(spec, "init", "uniform") == "gaussian" else "uniform"
            for name in (f"W{i}", f"b{i}"):
                if name in theta0:
                    out.append(_test(name, theta0[name], law, 1.0 / math.sqrt(fan_in), fan_in))
        return out
    if model is None:
        return out
    from torch import nn

    # a model that says so (ResNet-20: init_law = "kaiming-normal") draws its weights from
    # N(0, 2 / fan_in), as the reference's test for CIFAR ResNets assumes
    normal = getattr(model, "init_law", None) == "kaiming-normal"
    for mod_name, m in model.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue
        w = f"{mod_name}.weight" if mod_name else "weight"
        if w not in theta0:
            continue
        fan_in = int(np.prod(theta0[w].shape[1:]))
        bound = 1.0 / math.sqrt(fan_in)
        if normal:
            out.append(_test(w, theta0[w], "normal", math.sqrt(2.0 / fan_in), fan_in))
        else:
            out.append(_test(w, theta0[w], "uniform", bound, fan_in))
        b = f"{mod_name}.bias" if mod_name else "bias"
        if b in theta0 and theta0[b].size > 1:
            out.append(_test(b, theta0[b], "uniform", bound, fan_in))
    return out


def summary(tests: List[LayerTest]) -> Optional[str]:
    """None when every layer passes, else the failing layers named."""
    failed = [t for t in tests if not t.passed]
    if not failed:
        return None
    return "theta_0 is not distributed as a fresh initialisation: " + ", ".join(
        f"{t.tensor} (KS p = {t.p_value:.2g} against {t.law})" for t in failed[:5]
    )
