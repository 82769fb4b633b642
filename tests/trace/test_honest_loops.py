"""Honest training loops, generated: each is either recorded and accepted at epsilon = 0, or
refused while it is being recorded, with a reason. Never recorded and then rejected: for a
Proof-of-Learning verifier a false reject accuses an honest prover of forging.

A loop is drawn from the choices researchers make (model with or without BatchNorm and
dropout, made reproducible or not; optimizer and its options; learning-rate scheduler;
gradient clipping, declared or not; accumulation over micro-batches; augmentation; loss) and
run as an ordinary PyTorch loop around a TraceRecorder."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import exactforge.nn as xnn
from exactforge.data import load_dataset
from exactforge.trace.record import TraceRecorder
from exactforge.verify import verify_trace

DATA = load_dataset("digits")
X = torch.from_numpy(DATA.X).reshape(len(DATA), 1, 8, 8)
Y = torch.from_numpy(DATA.y)
STEPS, B = 5, 16


@dataclass(frozen=True)
class Loop:
    model: str  # "mlp" | "mlp-dropout" | "mlp-gelu" | "cnn" | "cnn-bn" | "cnn-bn-eval"
    reproducible: bool
    optimizer: str  # "sgd" | "momentum" | "nesterov" | "adam" | "adamw"
    scheduler: str  # "none" | "step" | "exp" | "cosine" | "linear" | "multistep" | "onecycle" | "plateau" | "hand"
    clip: str  # "none" | "norm" | "value"
    declare_clip: bool
    accumulate: int
    augment: str  # "none" | "torch" (torch's RNG) | "keyed" (exactforge.nn.KeyedAugment)
    loss: str  # "ce" | "ce-smooth" | "mse"
    zero_grad: bool
    groups: bool = False  # no weight decay on biases and norms, ten times the rate on the head
    declare_accumulate: bool = True  # accumulate= given to the recorder


def build_model(kind: str) -> nn.Module:
    if kind.startswith("mlp"):
        layers = [nn.Flatten(), nn.Linear(64, 24), nn.GELU("tanh") if kind == "mlp-gelu" else nn.ReLU()]
        if kind in ("mlp-dropout", "mlp-gelu"):
            layers.append(nn.Dropout(0.2))
        return nn.Sequential(*layers, nn.Linear(24, 10))
    layers = [nn.Conv2d(1, 4, 3)]
    if kind.startswith("cnn-bn"):
        layers.append(nn.BatchNorm2d(4))
    return nn.Sequential(*layers, nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))


def param_groups(model: nn.Module, groups: bool):
    if not groups:
        return model.parameters()
    named = list(model.named_parameters())
    head = named[-1][0].rsplit(".", 1)[0]  # the last layer
    decay = [p for n, p in named if p.dim() > 1 and not n.startswith(head)]
    flat = [p for n, p in named if p.dim() <= 1 and not n.startswith(head)]
    return [
        {"params": decay},
        {"params": flat, "weight_decay": 0.0},
        {"params": [p for n, p in named if n.startswith(head)], "lr": 0.1, "weight_decay": 0.0},
    ]


def build_optimizer(kind: str, params) -> torch.optim.Optimizer:
    return {
        "sgd": lambda: torch.optim.SGD(params, lr=0.05),
        "momentum": lambda: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4),
        "nesterov": lambda: torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True),
        "sgd-maximize-foreach": lambda: torch.optim.SGD(params, lr=0.05, momentum=0.5, maximize=True, foreach=True),
        "adam": lambda: torch.optim.Adam(params, lr=1e-2, weight_decay=1e-3),
        "adam-amsgrad": lambda: torch.optim.Adam(params, lr=1e-2, amsgrad=True),
        "adamw": lambda: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.05),
        "adamw-foreach": lambda: torch.optim.AdamW(params, lr=1e-2, foreach=True, amsgrad=True),
        "adam-fused": lambda: torch.optim.Adam(params, lr=1e-2, fused=True),
        "rmsprop": lambda: torch.optim.RMSprop(params, lr=1e-2, momentum=0.5, centered=True, weight_decay=1e-3),
    }[kind]()


def build_scheduler(kind: str, opt):
    S = torch.optim.lr_scheduler
    return {
        "none": lambda: None,
        "step": lambda: S.StepLR(opt, step_size=2, gamma=0.5),
        "exp": lambda: S.ExponentialLR(opt, gamma=0.8),
        "cosine": lambda: S.CosineAnnealingLR(opt, T_max=STEPS),
        "linear": lambda: S.LinearLR(opt, start_factor=0.25, total_iters=3),
        "multistep": lambda: S.MultiStepLR(opt, milestones=[1, 3], gamma=0.3),
        "onecycle": lambda: S.OneCycleLR(
            opt, max_lr=0.1, total_steps=STEPS, cycle_momentum=bool(opt.param_groups[0].get("momentum"))
        ),
        "plateau": lambda: S.ReduceLROnPlateau(opt, patience=0, factor=0.5),
        "hand": lambda: None,
        "warmup-cosine": lambda: S.SequentialLR(
            opt, [S.LinearLR(opt, start_factor=0.1, total_iters=2), S.CosineAnnealingLR(opt, T_max=3)], milestones=[2]
        ),
        "chained": lambda: S.ChainedScheduler([S.StepLR(opt, 2, gamma=0.5), S.ExponentialLR(opt, 0.9)]),
        "lambda": lambda: S.LambdaLR(opt, decay),
    }[kind]()


def decay(epoch: int) -> float:
    """A LambdaLR's function: the verifier supplies it (a trace cannot carry code)."""
    return 1.0 / (1 + epoch)


REPLAYABLE = ("step", "exp", "cosine", "linear", "multistep", "onecycle", "warmup-cosine", "chained", "lambda")


def losses(kind: str, reproducible: bool):
    """(loss_fn for the recorder, the loss the loop computes)."""
    if kind == "mse":
        f = xnn.mse_loss if reproducible else nn.functional.mse_loss

        def mse(out, y):
            return f(out, nn.functional.one_hot(y, 10).to(out.dtype))

        return (xnn.mse_loss if reproducible else nn.functional.mse_loss), mse
    s = 0.1 if kind == "ce-smooth" else 0.0
    if reproducible:
        fn = functools.partial(xnn.cross_entropy, label_smoothing=s)
        return fn, fn
    mod = nn.CrossEntropyLoss(label_smoothing=s)
    return mod, mod


def run(loop: Loop, out: str) -> None:
    """The loop, recorded; raises ValueError where the recorder refuses it."""
    torch.manual_seed(0)
    model = build_model(loop.model)
    if loop.model == "cnn-bn-eval":
        model[1].eval()
    if loop.reproducible:
        model = xnn.reproducible(model)
    try:
        opt = build_optimizer(loop.optimizer, param_groups(model, loop.groups))
        sched = build_scheduler(loop.scheduler, opt)
    except ValueError as exc:  # not a refusal: the loop itself is malformed
        raise RuntimeError(f"the generated loop does not build: {exc}") from exc
    loss_fn, loss_of = losses(loop.loss, loop.reproducible)
    clip_kw = {}
    if loop.clip != "none" and loop.declare_clip:
        clip_kw = {"clip_grad_norm": 0.5} if loop.clip == "norm" else {"clip_grad_value": 0.01}
    rng = np.random.default_rng(0)
    aug = xnn.KeyedAugment(crop_padding=1, hflip=True, rot90=True, seed=5) if loop.augment == "keyed" else None
    with TraceRecorder(
        out,
        model,
        opt,
        DATA,
        steps=STEPS,
        batch_size=B,
        loss_fn=loss_fn,
        scheduler=sched,
        seed=3,
        input_shape=(1, 8, 8),
        augment=aug,
        accumulate=loop.accumulate if loop.declare_accumulate else 1,
        **clip_kw,
    ) as rec:
        for t in range(STEPS):
            idx = rng.choice(len(DATA), B, replace=False)
            micro = loop.accumulate > 1 and loop.declare_accumulate
            if not micro:
                rec.begin(idx)
            if loop.zero_grad:
                opt.zero_grad()
            parts = np.array_split(idx, loop.accumulate)
            for part in parts:
                if micro:
                    rec.begin(part)  # each micro-batch's dropout keys
                x = X[torch.from_numpy(part)]
                if loop.augment == "torch":
                    x = torch.where(torch.rand(len(part), 1, 1, 1) < 0.5, x.flip(-1), x)
                elif loop.augment == "keyed":
                    x = rec.augment(x, part)
                loss = loss_of(model(x), Y[torch.from_numpy(part)]) / loop.accumulate
                loss.backward()
            if loop.clip == "norm":
                (xnn.clip_grad_norm_ if loop.reproducible else nn.utils.clip_grad_norm_)(model.parameters(), 0.5)
            elif loop.clip == "value":
                nn.utils.clip_grad_value_(model.parameters(), 0.01)
            opt.step()
            if loop.scheduler == "plateau":
                sched.step(float(loss.detach()))
            elif loop.scheduler == "hand":
                opt.param_groups[0]["lr"] *= 0.7
            elif sched is not None:
                sched.step()
            rec.step(idx)


def fresh(loop: Loop) -> nn.Module:
    model = build_model(loop.model)
    if loop.model == "cnn-bn-eval":
        model[1].eval()
    return model


def check(loop: Loop, out: str) -> str:
    try:
        run(loop, out)
    except ValueError as exc:
        assert str(exc), "a refusal must say why"
        return "refused"
    torch.manual_seed(1)
    rep = verify_trace(out, model=fresh(loop), loss_fn=None, lr_lambda=decay)
    assert rep.valid and rep.accepted and rep.max_error == 0.0, (loop, rep.reason, rep.max_error)
    rates = rep.learning_rates
    if loop.scheduler in REPLAYABLE:
        assert rates["follows"] and rates["per_step"] > 0, rates
    elif loop.scheduler in ("hand", "plateau"):
        assert rates["follows"] is None and rates["reason"], rates
    if loop.reproducible:
        rep = verify_trace(out, model=fresh(loop), permute_batches=11, threads=1)
        assert rep.valid and rep.accepted and rep.max_error == 0.0, (loop, "permuted", rep.reason, rep.max_error)
    return "accepted"


LOOPS = st.builds(
    Loop,
    model=st.sampled_from(["mlp", "mlp-dropout", "mlp-gelu", "cnn", "cnn-bn", "cnn-bn-eval"]),
    reproducible=st.booleans(),
    optimizer=st.sampled_from(
        [
            "sgd",
            "momentum",
            "nesterov",
            "sgd-maximize-foreach",
            "adam",
            "adam-amsgrad",
            "adamw",
            "adamw-foreach",
            "rmsprop",
        ]
    ),
    scheduler=st.sampled_from(("none", "plateau", "hand") + REPLAYABLE),
    clip=st.sampled_from(["none", "norm", "value"]),
    declare_clip=st.booleans(),
    accumulate=st.sampled_from([1, 1, 2]),
    augment=st.sampled_from(["none", "none", "torch", "keyed"]),
    loss=st.sampled_from(["ce", "ce-smooth", "mse"]),
    zero_grad=st.sampled_from([True, True, False]),
    groups=st.booleans(),
    declare_accumulate=st.booleans(),
)


@pytest.mark.slow
@settings(max_examples=40)
@given(loop=LOOPS)
def test_an_honest_loop_is_accepted_at_epsilon_0_or_refused_while_recording(loop, tmp_path_factory):
    check(loop, str(tmp_path_factory.mktemp("loop") / "t"))


# the loops researchers write most, each with the verdict it must get
NAMED = {
    "StepLR": (Loop("mlp", False, "momentum", "step", "none", False, 1, "none", "ce", True), "accepted"),
    "clip_grad_norm_, declared": (Loop("mlp", False, "sgd", "none", "norm", True, 1, "none", "ce", True), "accepted"),
    "clip_grad_norm_, undeclared": (
        Loop("mlp", False, "sgd", "none", "norm", False, 1, "none", "ce", True),
        "refused",
    ),
    "Adam, cosine, clipping, label smoothing": (
        Loop("cnn-bn", False, "adamw", "cosine", "norm", True, 1, "none", "ce-smooth", True),
        "accepted",
    ),
    "reproducible, warm-up, order-free clipping": (
        Loop("cnn", True, "adamw", "linear", "norm", True, 1, "none", "ce-smooth", True),
        "accepted",
    ),
    "warm-up then cosine (SequentialLR)": (
        Loop("cnn-bn", False, "adamw", "warmup-cosine", "norm", True, 1, "keyed", "ce-smooth", True),
        "accepted",
    ),
    "LambdaLR, the verifier supplying the function": (
        Loop("mlp", True, "sgd", "lambda", "none", False, 1, "none", "ce", True),
        "accepted",
    ),
    "parameter groups, warm-up and cosine": (
        Loop("cnn-bn", True, "adamw", "warmup-cosine", "norm", True, 1, "keyed", "ce-smooth", True, groups=True),
        "accepted",
    ),
    "amsgrad, foreach, maximize": (
        Loop("mlp-dropout", False, "adamw-foreach", "cosine", "none", False, 1, "none", "ce", True, groups=True),
        "accepted",
    ),
    "GELU and dropout, reproducible, accumulated": (
        Loop("mlp-gelu", True, "adam-amsgrad", "chained", "value", True, 2, "keyed", "mse", True, groups=True),
        "accepted",
    ),
    "RMSprop, centered with momentum, BatchNorm, reproducible": (
        Loop("cnn-bn", True, "rmsprop", "multistep", "norm", True, 1, "none", "ce", True, groups=True),
        "accepted",
    ),
    "RMSprop, torch": (Loop("mlp-dropout", False, "rmsprop", "exp", "none", False, 1, "none", "ce", True), "accepted"),
    "fused Adam": (Loop("mlp", False, "adam-fused", "none", "none", False, 1, "none", "ce", True), "refused"),
    "ReduceLROnPlateau": (Loop("mlp", False, "sgd", "plateau", "none", False, 1, "none", "ce", True), "accepted"),
    "lr edited by hand": (Loop("mlp", False, "sgd", "hand", "none", False, 1, "none", "ce", True), "accepted"),
    "OneCycleLR cycling momentum": (
        Loop("mlp", False, "momentum", "onecycle", "none", False, 1, "none", "ce", True),
        "refused",
    ),
    "gradient accumulation, declared": (
        Loop("cnn-bn", True, "momentum", "cosine", "norm", True, 2, "keyed", "ce-smooth", True),
        "accepted",
    ),
    "gradient accumulation with dropout, torch": (
        Loop("mlp-dropout", False, "adam", "step", "value", True, 2, "none", "mse", True),
        "accepted",
    ),
    "gradient accumulation, undeclared": (
        Loop("mlp", False, "sgd", "none", "none", False, 2, "none", "ce", True, declare_accumulate=False),
        "refused",
    ),
    "keyed crop, flip and rotation, reproducible": (
        Loop("cnn-bn", True, "adamw", "cosine", "norm", True, 1, "keyed", "ce-smooth", True),
        "accepted",
    ),
    "keyed crop, flip and rotation, torch": (
        Loop("mlp-dropout", False, "nesterov", "none", "none", False, 1, "keyed", "ce", True),
        "accepted",
    ),
    "random flip": (Loop("cnn", False, "sgd", "none", "none", False, 1, "torch", "ce", True), "refused"),
    "no zero_grad": (Loop("mlp", False, "sgd", "none", "none", False, 1, "none", "ce", False), "refused"),
    "BatchNorm training, torch": (
        Loop("cnn-bn", False, "sgd", "none", "none", False, 1, "none", "ce", True),
        "accepted",
    ),
    "BatchNorm eval, reproducible": (
        Loop("cnn-bn-eval", True, "momentum", "none", "none", False, 1, "none", "ce", True),
        "accepted",
    ),
    "BatchNorm training, reproducible": (
        Loop("cnn-bn", True, "momentum", "step", "norm", True, 1, "none", "ce-smooth", True),
        "accepted",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NAMED))
def test_a_common_loop_gets_its_verdict(name, tmp_path):
    loop, verdict = NAMED[name]
    assert check(loop, str(tmp_path / "t")) == verdict


def test_torch_loss_on_a_reproducible_model_is_refused_before_anything_is_written(tmp_path):
    model = xnn.reproducible(build_model("mlp"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="exactforge.nn.cross_entropy"):
        TraceRecorder(str(tmp_path / "t"), model, opt, DATA, loss_fn=nn.CrossEntropyLoss(label_smoothing=0.1))
    assert not (tmp_path / "t").exists()


def test_zero_dimensional_buffers_keep_their_shape(tmp_path):
    """BatchNorm's num_batches_tracked is 0-d: it is written and declared as 0-d, not (1,)."""
    from exactforge.trace import Trace

    loop, _ = NAMED["BatchNorm training, torch"]
    run(loop, str(tmp_path / "t"))
    tr = Trace.open(str(tmp_path / "t"))
    assert tr.manifest.tensors["1.num_batches_tracked"] == ("I64", ())
    assert tr.load_checkpoint(tr.num_steps)["1.num_batches_tracked"].shape == ()


def test_rates_that_the_declared_scheduler_does_not_give_are_reported(tmp_path):
    """A scheduler stepped every other step (an epoch-wise loop) still verifies, since the
    records carry each step's rate, but the report says the rates are not the declared
    scheduler's once-per-step ones, from which step."""
    torch.manual_seed(0)
    model = build_model("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    rng = np.random.default_rng(0)
    with TraceRecorder(str(tmp_path / "t"), model, opt, DATA, steps=STEPS, batch_size=B, scheduler=sched) as rec:
        for t in range(STEPS):
            idx = rng.choice(len(DATA), B, replace=False)
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[torch.from_numpy(idx)]), Y[torch.from_numpy(idx)]).backward()
            opt.step()
            if t % 2 == 1:
                sched.step()
            rec.step(idx)
    torch.manual_seed(1)
    rep = verify_trace(str(tmp_path / "t"), model=build_model("mlp"))
    assert rep.accepted and rep.max_error == 0.0
    rates = rep.learning_rates
    assert rates["scheduler"] == "StepLR" and rates["follows"] is False and rates["first_difference"] == 1
    assert "declared scheduler gives" in rates["reason"]


class _Block(nn.Module):
    """torchvision's BasicBlock: conv-BN-ReLU, conv-BN, plus the input (through a strided 1x1
    convolution and BN where the shape changes), ReLU; in-place ReLUs and addition as there."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class SmallResNet(nn.Module):
    """ResNet-18's layout (stem conv-BN-ReLU-maxpool, BasicBlocks, AdaptiveAvgPool2d((1, 1)),
    flatten, Linear), narrow and shallow enough for a test."""

    def __init__(self, width: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(_Block(width, width, 1))
        self.layer2 = nn.Sequential(_Block(width, 2 * width, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _record_resnet(make, out: str, n: int = 12, batch: int = 4, steps: int = 2) -> None:
    """``steps`` SGD steps of a reproducible ``make()`` on tiny CIFAR-like data (3x32x32),
    recorded, then verified at epsilon 0 (and under a permuted batch on one thread)."""
    rng = np.random.default_rng(0)
    Xc = torch.from_numpy(rng.random((n, 3, 32, 32), dtype=np.float32))
    yc = torch.from_numpy(rng.integers(0, 10, n))
    torch.manual_seed(0)
    model = xnn.reproducible(make())
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with TraceRecorder(
        out, model, opt, (Xc, yc), steps=steps, batch_size=batch, loss_fn=xnn.cross_entropy, seed=0
    ) as rec:
        for t in range(steps):
            idx = rng.choice(n, batch, replace=False)
            opt.zero_grad()
            xnn.cross_entropy(model(Xc[torch.from_numpy(idx)]), yc[torch.from_numpy(idx)]).backward()
            opt.step()
            rec.step(idx)
    for kw in ({}, {"permute_batches": 3, "threads": 1}):
        torch.manual_seed(1)
        rep = verify_trace(out, model=make(), dataset=(Xc, yc), **kw)
        assert rep.valid and rep.accepted and rep.max_error == 0.0, (kw, rep.reason, rep.max_error)


def test_a_resnet18_style_model_ending_in_adaptive_pooling_verifies_at_epsilon_0(tmp_path):
    _record_resnet(SmallResNet, str(tmp_path / "t"))


def test_torchvisions_resnet18_verifies_at_epsilon_0(tmp_path):
    tv = pytest.importorskip("torchvision")
    _record_resnet(lambda: tv.models.resnet18(num_classes=10), str(tmp_path / "t"), n=4, batch=2)


@pytest.mark.parametrize("reproducible", [True, False])
def test_a_forward_pass_under_autocast_is_refused_while_recording(reproducible, tmp_path):
    """Mixed precision rounds the layers in bfloat16, which the verifier (replaying in the
    model's float32) would not reproduce: refused at the step, not recorded and then rejected."""
    torch.manual_seed(0)
    model = build_model("mlp")
    if reproducible:
        model = xnn.reproducible(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = xnn.cross_entropy if reproducible else nn.functional.cross_entropy
    idx = np.arange(B)
    with TraceRecorder(str(tmp_path / "t"), model, opt, DATA, steps=STEPS, batch_size=B, loss_fn=loss_fn) as rec:
        with pytest.raises(ValueError, match=r"torch.autocast \(cpu, bfloat16\).*model's own dtype"):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model(X[torch.from_numpy(idx)])
        # autocast switched off inside the region, and evaluation passes, are not refused
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.autocast("cpu", enabled=False):
            out = model(X[torch.from_numpy(idx)])
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(X[torch.from_numpy(idx)])
        opt.zero_grad()
        loss_fn(out, Y[torch.from_numpy(idx)]).backward()
        opt.step()
        rec.step(idx)


def test_an_undeclared_gradient_edit_is_refused_in_a_plain_sentence(tmp_path):
    torch.manual_seed(0)
    model = build_model("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    idx = np.arange(B)
    with TraceRecorder(str(tmp_path / "t"), model, opt, DATA, steps=STEPS, batch_size=B):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X[torch.from_numpy(idx)]), Y[torch.from_numpy(idx)]).backward()
        nn.utils.clip_grad_value_(model.parameters(), 1e-4)
        with pytest.raises(ValueError, match="parameter 0's gradient at optimizer.step\\(\\) differs from the one"):
            opt.step()


@pytest.mark.slow
def test_a_compiled_module_is_refused_with_the_fix_and_the_fix_verifies_at_epsilon_0(tmp_path):
    """torch.compile's wrapper names every tensor '_orig_mod.*': refused before anything is
    written, naming model._orig_mod; recording that while the loop calls the compiled module
    (dynamo's eager backend: tracing without code generation) verifies at epsilon 0."""
    torch.manual_seed(0)
    model = xnn.reproducible(build_model("mlp"))
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"torch.compile'd module.*model\._orig_mod"):
        TraceRecorder(str(tmp_path / "t"), compiled, opt, DATA, loss_fn=xnn.cross_entropy)
    assert not (tmp_path / "t").exists()
    rng = np.random.default_rng(0)
    steps = 2
    with TraceRecorder(
        str(tmp_path / "t"), compiled._orig_mod, opt, DATA, steps=steps, batch_size=B, loss_fn=xnn.cross_entropy
    ) as rec:
        for _ in range(steps):
            idx = rng.choice(len(DATA), B, replace=False)
            opt.zero_grad()
            xnn.cross_entropy(compiled(X[torch.from_numpy(idx)]), Y[torch.from_numpy(idx)]).backward()
            opt.step()
            rec.step(idx)
    torch.manual_seed(1)
    rep = verify_trace(str(tmp_path / "t"), model=build_model("mlp"))
    assert rep.valid and rep.accepted and rep.max_error == 0.0, (rep.reason, rep.max_error)
