"""The models of the reproduction-error studies, as ``torch.nn`` modules (the papers' zoo):
logistic regression, FCN (one hidden ReLU layer of 100 units), LeNet-5 and VGGmini (adapted to
the input size), and a small decoder-only Transformer classifier."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

__all__ = ["ZOO", "build_model", "FlatInput", "LeNet5", "VGGMini", "TransformerClassifier"]

ZOO = ("logreg", "fcn", "lenet", "vggmini", "transformer")


def _flat_size(features: nn.Module, shape: Tuple[int, ...]) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *shape)).numel())


class LeNet5(nn.Module):
    """LeNet-5: two 5x5 convolutions with max pooling, then 120-84-n fully connected layers.
    On 28x28 inputs it is the papers' network (the first convolution padded, the second not:
    61,706 parameters on MNIST); on smaller images (8x8 digits) both are padded so they fit."""

    def __init__(self, shape: Tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c = shape[0]
        pad2 = 0 if min(shape[1:]) >= 16 else 2
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=pad2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(_flat_size(self.features, shape), 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class VGGMini(nn.Module):
    """A small VGG-style CNN: two blocks of two 3x3 convolutions (32, 64 channels) with max
    pooling, then a 128-unit hidden layer."""

    def __init__(self, shape: Tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c = shape[0]
        self.features = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(_flat_size(self.features, shape), 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class TransformerClassifier(nn.Module):
    """A decoder-only Transformer (causal self-attention) over token ids; the class is read
    from the last position."""

    def __init__(
        self, vocab: int, seq_len: int, num_classes: int, d_model: int = 32, heads: int = 4, layers: int = 2
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(seq_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=2 * d_model, dropout=0.0, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L = x.shape
        # positions looked up per example (not broadcast over the batch), so the position table's
        # gradient is the embedding's own sum over the batch, not a broadcast's reduction
        h = self.tok(x) + self.pos(torch.arange(L, device=x.device).expand(B, L))
        mask = nn.Transformer.generate_square_subsequent_mask(L, device=x.device)
        h = self.blocks(h, mask=mask, is_causal=True)
        return self.head(h[:, -1])


class FlatInput(nn.Module):
    """``inner`` on the examples flattened to vectors (data sets carry image shapes)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.flatten(1))


_Flat = FlatInput  # the name before it was public (pickled models)


def build_model(
    name: str, input_shape: Tuple[int, ...], num_classes: int, *, vocab: Optional[int] = None, seed: int = 0
) -> nn.Module:
    """A freshly initialised model (seeded) for inputs of ``input_shape`` (without the batch)."""
    if name not in ZOO:
        raise ValueError(f"model: expected one of {ZOO}, got {name!r}")
    torch.manual_seed(seed)
    d = 1
    for s in input_shape:
        d *= int(s)
    if name == "logreg":
        return FlatInput(nn.Linear(d, num_classes))
    if name == "fcn":
        return FlatInput(nn.Sequential(nn.Linear(d, 100), nn.ReLU(), nn.Linear(100, num_classes)))
    if name == "transformer":
        if vocab is None or len(input_shape) != 1:
            raise ValueError("model: the transformer needs a token dataset (imdb or synthetic-tokens)")
        return TransformerClassifier(vocab, int(input_shape[0]), num_classes)
    if len(input_shape) != 3:
        raise ValueError(f"model: {name} needs image data (digits, mnist, cifar10), got inputs of shape {input_shape}")
    c, h, w = (int(s) for s in input_shape)
    return (LeNet5 if name == "lenet" else VGGMini)((c, h, w), num_classes)
