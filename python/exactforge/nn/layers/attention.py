"""Self-attention and the Transformer encoder: nn.MultiheadAttention computed with reproducible
pieces (``functional.multi_head_attention``), and TransformerEncoderLayer/TransformerEncoder
whose forwards call their (reproducible) children explicitly, because torch's own forwards may
take a fused fast path that bypasses the children."""

import torch.nn.functional as F
from torch import nn

from .._registry import UnsupportedLayerError, register_layer
from ..functional import dropout, gelu, multi_head_attention


@register_layer(nn.MultiheadAttention, owns_children=True)
def make_mha(module: nn.MultiheadAttention, mode: str):
    if module.bias_k is not None or module.add_zero_attn:
        raise UnsupportedLayerError("module: MultiheadAttention with add_bias_kv or add_zero_attn is not supported")
    if module.dropout > 0:
        # its attention-weight masks are keyed like Dropout's (dropout_keys numbers it among them)
        setattr(module, "_exactforge_keyed", True)

    def drop_weights(self, p):
        """Dropout on the attention weights (B*H, L, S), keyed per example like nn.Dropout."""
        if not self.training or self.dropout == 0:
            return p
        keys = getattr(self, "_exactforge_keys", None)
        if keys is None:
            raise RuntimeError(
                "MultiheadAttention: in training mode its attention-weight dropout is keyed to the step and the "
                "batch's examples; call exactforge.nn.dropout_keys(model, seed=..., step=..., examples=...) first"
            )
        seed, step, layer, examples = keys
        B = len(examples)
        return dropout(p.reshape(B, -1), self.dropout, seed=seed, step=step, layer=layer, examples=examples).reshape(
            p.shape
        )

    def forward(
        self,
        query,
        key,
        value,
        key_padding_mask=None,
        need_weights=True,
        attn_mask=None,
        average_attn_weights=True,
        is_causal=False,
    ):
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        # self-attention keeps one projection of the packed weight (the same tensor thrice)
        same = query is key or (query.data_ptr() == key.data_ptr() and query.shape == key.shape)
        if same and (key is value or (key.data_ptr() == value.data_ptr() and key.shape == value.shape)):
            key = value = query
        out, w = multi_head_attention(
            query,
            key,
            value,
            self,
            attn_mask,
            key_padding_mask,
            is_causal,
            need_weights,
            average_attn_weights,
            mode,
            drop=lambda p: drop_weights(self, p),
        )
        return (out if self.batch_first else out.transpose(0, 1)), w

    return forward


@register_layer(nn.TransformerEncoderLayer)
def make_encoder_layer(module: nn.TransformerEncoderLayer, mode: str):
    act = module.activation
    approximate = getattr(act, "approximate", "none")

    def activation(x):
        return F.relu(x) if relu else gelu(x, approximate)  # relu is exact: a comparison

    relu = act is F.relu or isinstance(act, nn.ReLU)
    if not (relu or act is F.gelu or isinstance(act, nn.GELU)):
        raise UnsupportedLayerError(
            "module: TransformerEncoderLayer: the ReLU and GELU activations are supported "
            f"(got {getattr(act, '__name__', type(act).__name__)})"
        )

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        def sa(x):
            return self.dropout1(
                self.self_attn(
                    x,
                    x,
                    x,
                    attn_mask=src_mask,
                    key_padding_mask=src_key_padding_mask,
                    need_weights=False,
                    is_causal=is_causal,
                )[0]
            )

        def ff(x):
            return self.dropout2(self.linear2(self.dropout(activation(self.linear1(x)))))

        x = src
        if self.norm_first:
            x = x + sa(self.norm1(x))
            return x + ff(self.norm2(x))
        x = self.norm1(x + sa(x))
        return self.norm2(x + ff(x))

    return forward


@register_layer(nn.TransformerEncoder)
def make_encoder(module: nn.TransformerEncoder, mode: str):
    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal))
        return self.norm(x) if self.norm is not None else x

    return forward
