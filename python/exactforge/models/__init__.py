"""Models and the step engine.

- ``native``: exactforge's own NumPy models (logistic regression, fully connected ReLU
  networks) with the order-free forward, gradient and SGD step; its names are re-exported
  here, so ``exactforge.models.ModelSpec`` is ``exactforge.models.native.ModelSpec``.
- ``torch_fcn``: the native models as ``torch.nn`` modules; ``zoo``: the torch models of the
  studies (LeNet-5, VGGmini, a small transformer); ``optim``: torch optimizers described in a
  trace's manifest; ``layout``: the one converter between a native parameter dict, a torch
  module and the flat vector of the attacks; ``step``: the one step engine (forward, loss,
  gradient, update; native or torch) used by recording, verification, studies and attacks."""

from .layout import flatten, unflatten  # noqa: F401
from .native import (  # noqa: F401
    REDUCTION_PLANS,
    ModelSpec,
    Params,
    PerExample,
    check_params,
    forward,
    init_params,
    loss_and_grad,
    output_errors,
    per_example,
    sgd_step,
    softmax_xent,
)
from .native import __all__ as _native_all

# REDUCTION_PLANS is named in the trace reader's refusal of a manifest's reduction_plan
__all__ = [*_native_all, "REDUCTION_PLANS", "flatten", "unflatten"]
