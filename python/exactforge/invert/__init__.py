"""Gradient inversion as the verifier's forensics: what batch does a logged update come from?

* ``tensor_reconstruct(W, g, b, activation=...)``: the tensor method for wide two-layer
  networks (Stein's identity, Hermite moment tensors, Jennrich's decomposition), with a
  guaranteed error of O(sqrt(d/m)) where its conditions hold (``conditions``).
* ``dlg`` and ``recover_labels``: Deep Leakage from Gradients for any torch classifier, with
  iDLG's labels read from the sign of the last layer's gradient.
* ``match``: reconstructions against examples, up to order and sign.
* ``invert_step`` (``exactforge invert``): a logged step's batch, reconstructed from the update
  and compared with the claimed batch and the data set; ``identifiability``: where the tensor
  method's conditions hold, the nullspace forgeries of exactforge.exact do not exist.
"""

from __future__ import annotations

from .dlg import DLGResult, dlg, recover_labels
from .forensics import InversionReport, identifiability, invert_step
from .match import cosines, match
from .tensor import ACTIVATIONS, TensorReconstruction, conditions, tensor_reconstruct, tensor_reconstruct_details

__all__ = [
    "ACTIVATIONS",
    "DLGResult",
    "InversionReport",
    "identifiability",
    "invert_step",
    "TensorReconstruction",
    "conditions",
    "cosines",
    "dlg",
    "match",
    "recover_labels",
    "tensor_reconstruct",
    "tensor_reconstruct_details",
]
