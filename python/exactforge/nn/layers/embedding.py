from torch import nn

from .._registry import UnsupportedLayerError, register_layer
from ..functional import embedding


@register_layer(nn.Embedding)
def make_embedding(module: nn.Embedding, mode: str):
    # max_norm rescales rows of the table in the forward pass (an in-place write), sparse and
    # scale_grad_by_freq change the gradient's form: none is implemented, so they are refused
    if module.max_norm is not None or module.sparse or module.scale_grad_by_freq:
        raise UnsupportedLayerError("module: Embedding with max_norm, sparse or scale_grad_by_freq is not supported")

    def forward(self, ids):
        return embedding(ids, self.weight, self.padding_idx, mode)

    return forward
