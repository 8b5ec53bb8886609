"""DeepLabV2-ResNet101 as the official ProDA/CPSL code builds it (docs/protocol.md, Network).

Structure (module names chosen so that ``state_dict()`` matches the official
``models/deeplabv2.py`` key for key and shape for shape):

* stem: ``conv1`` 7x7/2 (no bias) -> ``bn1`` -> ReLU -> maxpool 3x3/2 pad 1 ``ceil_mode=True``
* ``layer1``..``layer4``: Caffe-style bottlenecks (the stride sits on the first 1x1 conv),
  layer2 stride 2, layer3 dilation 2, layer4 dilation 4 (output stride 8, no multi-grid).
  Block 0 of every layer has a ``downsample`` (1x1 conv + BN).
* optional ``bn_pretrain``: BatchNorm2d on the backbone output (``bn_clr=True``, SimCLR init)
* ``layer5`` (the official ``Classifier_Module2``): five parallel branches (1x1 and four
  dilated 3x3 convs, with bias, + GroupNorm + ReLU) -> concat -> SE block -> 3x3 conv + GN
  (no ReLU) -> Dropout2d(0.1) = ``feat`` -> 1x1 conv without bias = ``out``.

``forward`` returns ``{"feat": (N, feature_dim, h, w), "out": (N, C, h, w)}``, both at output
stride 8 (a 512x896 crop gives 65x113, a 1024x2048 image 129x257).

Presets are data (:class:`ArchSpec`); the CPU demo preset ``"small"`` runs the same code with
fewer blocks, narrower channels and smaller head dilations.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

EXPANSION = 4  # bottleneck expansion (out channels = 4 * planes)


@dataclass(frozen=True)
class ArchSpec:
    """Widths, depths and dilations of one DeepLabV2 preset."""

    layers: tuple[int, int, int, int]          # bottleneck blocks per stage
    stem_width: int                             # conv1 output channels
    planes: tuple[int, int, int, int]           # bottleneck widths per stage (x4 out)
    head_width: int                             # ASPP branch / feat channels
    gn_groups: int                              # GroupNorm groups in the head
    aspp_dilations: tuple[int, ...]             # dilation = padding of the 3x3 branches
    se_reduction: int = 16
    dropout: float = 0.1

    def __post_init__(self):
        if self.head_width % self.gn_groups:
            raise ValueError(f"gn_groups {self.gn_groups} must divide head_width {self.head_width}")
        n_cat = self.head_width * (len(self.aspp_dilations) + 1)
        if n_cat // self.se_reduction < 1:
            raise ValueError(f"se_reduction {self.se_reduction} too large for {n_cat} channels")

    @property
    def backbone_dim(self) -> int:
        return self.planes[3] * EXPANSION


ARCHS: dict[str, ArchSpec] = {
    # the official network: ResNet-101 [3, 4, 23, 3], head 256 / GN(32), ASPP 6/12/18/24
    "resnet101": ArchSpec(
        layers=(3, 4, 23, 3),
        stem_width=64,
        planes=(64, 128, 256, 512),
        head_width=256,
        gn_groups=32,
        aspp_dilations=(6, 12, 18, 24),
    ),
    # CPU demo (128x64 images, batch 4): same structure, one block per stage, narrow widths.
    # The head dominates the cost (it scales with backbone_dim x head_width at OS8), so the
    # early stages are relatively wide. fwd+bwd of 4x3x64x128 ~ 40 ms on one CPU thread.
    "small": ArchSpec(
        layers=(1, 1, 1, 1),
        stem_width=16,
        planes=(16, 32, 48, 64),
        head_width=64,
        gn_groups=8,
        aspp_dilations=(1, 2, 3, 4),
    ),
}


class Bottleneck(nn.Module):
    """ResNet bottleneck. Caffe style (DeepLabV2): the stride is on ``conv1`` (1x1), dilation on
    ``conv2``; ``stride_in_3x3`` (mmseg's "pytorch" style, DDB's ResNetV1c): stride and dilation
    both on the 3x3 ``conv2``. Same layers and key names either way."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, stride_in_3x3: bool = False):
        super().__init__()
        s1, s3 = (1, stride) if stride_in_3x3 else (stride, 1)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=s1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=s3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(y + shortcut)


class SEBlock(nn.Module):
    """Squeeze-and-excitation: global average pool -> FC -> ReLU -> FC -> sigmoid -> scale."""

    def __init__(self, channels: int, r: int = 16):
        super().__init__()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.se = nn.Sequential(
            nn.Linear(channels, channels // r),
            nn.ReLU(inplace=True),
            nn.Linear(channels // r, channels),
            nn.Sigmoid(),
        )

    def forward(self, x):
        w = self.se(self.global_pool(x).flatten(1))
        return x * w[:, :, None, None]


def _branch(in_ch: int, out_ch: int, groups: int, kernel: int, dilation: int) -> nn.Sequential:
    pad = dilation if kernel == 3 else 0
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=pad, dilation=dilation, bias=True),
        nn.GroupNorm(groups, out_ch),
        nn.ReLU(inplace=True),
    )


class ASPPHead(nn.Module):
    """The official ``Classifier_Module2`` (``layer5``)."""

    def __init__(self, in_ch: int, num_classes: int, spec: ArchSpec):
        super().__init__()
        w, g = spec.head_width, spec.gn_groups
        self.conv2d_list = nn.ModuleList(
            [_branch(in_ch, w, g, kernel=1, dilation=1)]
            + [_branch(in_ch, w, g, kernel=3, dilation=d) for d in spec.aspp_dilations]
        )
        cat_ch = w * len(self.conv2d_list)
        self.bottleneck = nn.Sequential(
            SEBlock(cat_ch, spec.se_reduction),
            nn.Conv2d(cat_ch, w, 3, padding=1, bias=True),
            nn.GroupNorm(g, w),
        )
        self.head = nn.Sequential(
            nn.Dropout2d(spec.dropout),
            nn.Conv2d(w, num_classes, 1, bias=False),
        )

    def forward(self, x) -> dict[str, torch.Tensor]:
        y = torch.cat([branch(x) for branch in self.conv2d_list], dim=1)
        feat = self.head[0](self.bottleneck(y))
        return {"feat": feat, "out": self.head[1](feat)}


class DeepLabV2(nn.Module):
    """DeepLabV2 with the ProDA/CPSL head. See the module docstring."""

    def __init__(self, num_classes: int, spec: ArchSpec, bn_clr: bool = False, arch: str | None = None):
        super().__init__()
        self.arch = arch
        self.spec = spec
        self.num_classes = int(num_classes)
        self.bn_clr = bool(bn_clr)
        self.feature_dim = spec.head_width

        self._inplanes = spec.stem_width
        self.conv1 = nn.Conv2d(3, spec.stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(spec.stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        strides, dilations = (1, 2, 1, 1), (1, 1, 2, 4)
        for i in range(4):
            layer = self._make_layer(spec.planes[i], spec.layers[i], strides[i], dilations[i])
            setattr(self, f"layer{i + 1}", layer)
        self.layer5 = ASPPHead(spec.backbone_dim, self.num_classes, spec)
        # registered after layer5, as in the official code, so the key order matches too
        self.bn_pretrain = nn.BatchNorm2d(spec.backbone_dim) if self.bn_clr else None
        del self._inplanes
        self._init_weights()

    def _make_layer(self, planes: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
        out = planes * EXPANSION
        downsample = None
        if stride != 1 or self._inplanes != out or dilation != 1:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out),
            )
        blocks_ = [Bottleneck(self._inplanes, planes, stride, dilation, downsample)]
        self._inplanes = out
        blocks_ += [Bottleneck(out, planes, 1, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*blocks_)

    @torch.no_grad()
    def _init_weights(self):
        # What the official constructor ends up with: every Conv2d weight N(0, 0.01) (the
        # ResNet101 loop runs last and overrides the head's kaiming / N(0, 0.001) init),
        # BatchNorm 1/0, and the head bottleneck conv bias 0. The Classifier_Module2 init
        # loops iterate over Sequentials / the SEBlock and never reach the branch convs or
        # the SE Linear layers, so branch conv biases, GroupNorm and SE Linears keep
        # PyTorch's default init.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0.0, 0.01)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
        self.layer5.bottleneck[1].bias.zero_()

    def backbone_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1, self.layer1, self.layer2, self.layer3, self.layer4]

    def head_modules(self) -> list[nn.Module]:
        return ([self.bn_pretrain] if self.bn_pretrain is not None else []) + [self.layer5]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.bn_pretrain is not None:
            x = self.bn_pretrain(x)
        return self.layer5(x)


def build_deeplabv2(num_classes: int, arch: str = "resnet101", bn_clr: bool = False) -> DeepLabV2:
    """Build a randomly initialised DeepLabV2 (official init) of preset ``arch``."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(sorted(ARCHS))}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    return DeepLabV2(num_classes, ARCHS[arch], bn_clr=bn_clr, arch=arch)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def official_repeats(modules) -> dict[int, int]:
    """How often the official ``get_1x_lr_params`` yields each parameter of ``modules``:
    ``for m in modules: for j in m.modules(): for p in j.parameters(): yield p`` yields a
    parameter once for every module on its path from ``m`` down to its owner, so a bottleneck
    conv of ``layer1`` comes 3 times (layer, block, conv), a downsample conv 4 times and the stem
    ``conv1`` / ``bn1`` once. Returns ``{id(param): count}``."""
    counts: dict[int, int] = {}
    for m in modules:
        for j in m.modules():
            for p in j.parameters():
                counts[id(p)] = counts.get(id(p), 0) + 1
    return counts


def param_groups(model: nn.Module, lr: float, head_lr_mult: float = 10.0,
                 repeat_params_official: bool = False) -> list[dict]:
    """Optimizer groups: backbone (conv1, bn1, layer1-4) at ``lr``, head (bn_pretrain +
    layer5) at ``head_lr_mult * lr``. Every parameter appears exactly once. Each group carries
    ``initial_lr`` (for LR schedulers) and a ``name``.

    ``repeat_params_official=True``: each group also carries ``repeats``, one count per
    parameter: how often the official code lists it (``official_repeats`` for the backbone's
    ``get_1x_lr_params``; 1 for the head, whose ``get_10x_lr_params`` yields each once).
    ``RepeatedParamSGD`` turns the counts into the official update."""
    net = unwrap(model)
    groups = []
    for name, modules, group_lr in (
        ("backbone", net.backbone_modules(), lr),
        ("head", net.head_modules(), lr * head_lr_mult),
    ):
        params = [p for m in modules for p in m.parameters()]
        group = {"params": params, "lr": group_lr, "initial_lr": group_lr, "name": name}
        if repeat_params_official:
            counts = official_repeats(modules) if name == "backbone" else {}
            group["repeats"] = [counts.get(id(p), 1) for p in params]
        groups.append(group)
    covered = {id(p) for g in groups for p in g["params"]}
    missing = [n for n, p in net.named_parameters() if id(p) not in covered]
    if missing or len(covered) != sum(len(g["params"]) for g in groups):
        raise RuntimeError(f"param_groups does not cover the model exactly once (missing {missing[:3]})")
    return groups


class RepeatedParamSGD(torch.optim.SGD):
    """SGD with momentum and weight decay that updates a parameter ``k`` times per step when its
    group lists it with ``repeats`` k, exactly as ``torch.optim.SGD`` (single-tensor loop) treats a
    parameter list that contains the same tensor k times, i.e. the official optimiser over
    ``get_1x_lr_params``. Each of the k updates reads the parameter as the previous one left it
    (weight decay ``g + wd * p``), and shares the parameter's one momentum buffer:
    ``buf <- m * buf + d; p <- p - lr * buf``, k times. In the very first step every occurrence
    starts its buffer afresh (``buf = d``, as the buffers torch collects before the loop are all
    empty) and the last one is kept. Groups without ``repeats`` (e.g. CPSL's prototypes) get one
    update per parameter. The sequential loop runs on any device (torch's CUDA default, the
    ``foreach`` path, would compute every occurrence's weight decay before the first update).
    Dampening, Nesterov and ``maximize`` are not supported (the official code uses none)."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=False)

    def add_param_group(self, param_group: dict) -> None:
        reps = param_group.get("repeats")
        if reps is not None:
            n = 1 if isinstance(param_group["params"], torch.Tensor) else len(list(param_group["params"]))
            if len(reps) != n or any(int(r) < 1 for r in reps):
                raise ValueError(f"param group {param_group.get('name', '?')!r}: 'repeats' needs one count >= 1 "
                                 f"per parameter ({len(reps)} for {n})")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            reps = group.get("repeats") or [1] * len(group["params"])
            for p, k in zip(group["params"], reps):
                if p.grad is None:
                    continue
                state = self.state[p]
                first = state.get("momentum_buffer") is None
                buf = state.get("momentum_buffer")
                for _ in range(int(k)):
                    d = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                    if m != 0:
                        if first:
                            buf = d.clone()
                        else:
                            buf.mul_(m).add_(d)
                        d = buf
                    p.add_(d, alpha=-lr)
                if m != 0:
                    state["momentum_buffer"] = buf
        return loss


def sgd(model: nn.Module, lr: float, head_lr_mult: float, momentum: float, weight_decay: float,
        repeat_params_official: bool = False) -> torch.optim.SGD:
    """The training loops' SGD over ``param_groups``: plain ``torch.optim.SGD`` (each parameter
    updated once per step), or with ``repeat_params_official`` the official update in which the
    backbone's parameters are updated as often as ``get_1x_lr_params`` lists them
    (``RepeatedParamSGD``; docs/choices.md, Schedule and optimiser)."""
    groups = param_groups(model, lr, head_lr_mult, repeat_params_official)
    if repeat_params_official:
        return RepeatedParamSGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "ARCHS", "ArchSpec", "Bottleneck", "SEBlock", "ASPPHead", "DeepLabV2",
    "build_deeplabv2", "official_repeats", "param_groups", "RepeatedParamSGD", "sgd", "unwrap",
    "count_parameters",
]
