"""The models of the reproduction-error studies, as ``torch.nn`` modules (the papers' zoo):
logistic regression, FCN (one hidden ReLU layer of 100 units), LeNet-5 and VGGmini (adapted to
the input size), a small decoder-only Transformer classifier, and ResNet-20 (He et al.'s CIFAR
ResNet, as the Proof-of-Learning reference trains it: its state_dict keys are that code's, so
the reference's proofs load into it)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

__all__ = ["ZOO", "build_model", "FlatInput", "LeNet5", "VGGMini", "TransformerClassifier", "ResNet20"]

ZOO = ("logreg", "fcn", "lenet", "vggmini", "transformer", "resnet20")


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


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a shortcut: the identity, or the parameter-free
    option A where the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        from ..nn import ShortcutA

        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            ShortcutA(in_planes, planes, stride) if stride != 1 or in_planes != planes else nn.Sequential()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 for 32x32 images: a 3x3 convolution to 16 channels, three stages of three
    basic blocks (16, 32, 64 channels; the second and third start with stride 2), global average
    pooling and a linear layer; 0.27M parameters on CIFAR-10. Kaiming-normal initialisation of
    the convolutions and the linear weight, as the reference."""

    init_law = "kaiming-normal"  # what the initialisation-law test checks theta_0 against

    def __init__(self, shape: Tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c, h, w = shape
        self.conv1 = nn.Conv2d(c, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes, layers = 16, []
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for s in (stride, 1, 1):
                blocks.append(BasicBlock(planes, width, s))
                planes = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        size = ((h + 3) // 4, (w + 3) // 4)  # after two stride-2 stages
        self.pool = nn.AvgPool2d(size)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.pool(out).flatten(1))


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
    return {"lenet": LeNet5, "vggmini": VGGMini, "resnet20": ResNet20}[name]((c, h, w), num_classes)
