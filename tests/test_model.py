"""DeepLabV2 / discriminator / weight loading / checkpoint format (segcore.models)."""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from segcore.models.checkpoint import load_model, save_model
from segcore.models.deeplabv2 import ARCHS, build_deeplabv2, count_parameters, param_groups
from segcore.models.discriminator import FCDiscriminator
from segcore.models.weights import (
    load_imagenet_backbone,
    load_official_checkpoint,
    load_simclr_backbone,
    read_official_checkpoint,
)

TSV = Path(__file__).resolve().parent / "data" / "proda_deeplabv2_state_dict.tsv"


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(d) for d in t.shape) if t.dim() else "scalar"


def _official_keys(num_classes: int, bn_clr: bool) -> list[tuple[str, str]]:
    rows = []
    for line in TSV.read_text().splitlines():
        if not line or line.startswith("#") or line.startswith("key\t"):
            continue
        key, shape, *note = line.split("\t")
        if "bn_clr" in note and not bn_clr:
            continue
        if key == "layer5.head.1.weight":
            shape = f"{num_classes}x" + shape.split("x", 1)[1]
        rows.append((key, shape))
    return rows


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """A torchvision ResNet-101 state dict (random weights, real key names) and its file."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    sd = torchvision.models.resnet101(weights=None).state_dict()
    path = tmp_path_factory.mktemp("imagenet") / "resnet101.pth"
    torch.save(sd, path)
    return path, sd


def _small(num_classes=19, bn_clr=False, seed=0):
    torch.manual_seed(seed)
    return build_deeplabv2(num_classes, "small", bn_clr=bn_clr)


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- architecture


@pytest.fixture(scope="module")
def r101():
    """One CPU ResNet-101 build (19 classes, no bn_clr) shared by the slower tests; tests
    that load weights into it only check what they loaded."""
    torch.manual_seed(0)
    return build_deeplabv2(19, "resnet101")


@pytest.mark.parametrize("bn_clr", [False, True])
@pytest.mark.parametrize("num_classes", [19, 16])
def test_resnet101_state_dict_matches_official(num_classes, bn_clr):
    with torch.device("meta"):
        model = build_deeplabv2(num_classes, "resnet101", bn_clr=bn_clr)
    got = [(k, _shape(v)) for k, v in model.state_dict().items()]
    assert got == _official_keys(num_classes, bn_clr)  # same keys, same order, same shapes
    assert model.feature_dim == 256


def test_resnet101_forward(r101):
    r101.eval()
    with torch.no_grad():
        out = r101(torch.randn(1, 3, 64, 112))
    assert out["feat"].shape == (1, 256, 9, 15)
    assert out["out"].shape == (1, 19, 9, 15)
    assert torch.isfinite(out["out"]).all()


@pytest.mark.parametrize("hw,expect", [((64, 128), (9, 17)), ((512, 896), (65, 113)),
                                       ((1024, 2048), (129, 257))])
def test_output_stride_8_with_ceil_mode_pool(hw, expect):
    # shape arithmetic only: a meta-device forward of the real network
    with torch.device("meta"):
        model = build_deeplabv2(19, "resnet101", bn_clr=True).eval()
        out = model(torch.empty(2, 3, *hw))
    assert out["out"].shape == (2, 19, *expect)
    assert out["feat"].shape == (2, 256, *expect)


def test_small_preset_trains_and_is_the_same_structure():
    model = _small(bn_clr=True).train()
    # same module names as the official network, only fewer blocks / narrower tensors
    official = {k for k, _ in _official_keys(19, True)}
    assert set(model.state_dict()) <= official
    x = torch.randn(4, 3, 64, 128)
    out = model(x)
    assert out["out"].shape == (4, 19, 9, 17) and out["feat"].shape == (4, 64, 9, 17)
    loss = nn.functional.cross_entropy(out["out"], torch.randint(0, 19, (4, 9, 17)))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_official_init():
    model = _small()
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.weight.numel() >= 2000:
            assert abs(m.weight.std().item() - 0.01) < 0.002, name
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0), name
    assert torch.all(model.layer5.bottleneck[1].bias == 0)
    assert model.layer5.head[1].bias is None


def test_presets_are_data():
    assert ARCHS["resnet101"].layers == (3, 4, 23, 3)
    assert ARCHS["small"].head_width % ARCHS["small"].gn_groups == 0
    with pytest.raises(ValueError, match="unknown arch"):
        build_deeplabv2(19, "resnet50")


@pytest.mark.parametrize("bn_clr", [False, True])
def test_param_groups_cover_every_parameter_once(bn_clr):
    model = _small(bn_clr=bn_clr)
    groups = param_groups(model, lr=2e-3, head_lr_mult=10.0)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    backbone, head = groups
    assert backbone["lr"] == backbone["initial_lr"] == 2e-3
    assert head["lr"] == head["initial_lr"] == pytest.approx(2e-2)
    head_ids = {id(p) for p in head["params"]}
    assert {id(p) for p in model.layer5.parameters()} <= head_ids
    if bn_clr:
        assert {id(p) for p in model.bn_pretrain.parameters()} <= head_ids
    assert id(model.conv1.weight) in {id(p) for p in backbone["params"]}
    torch.optim.SGD(groups, lr=2e-3, momentum=0.9)  # accepted as is


def test_discriminator():
    disc = FCDiscriminator(19)
    assert [k for k in disc.state_dict()] == [
        "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "conv3.weight",
        "conv3.bias", "conv4.weight", "conv4.bias", "classifier.weight", "classifier.bias"]
    assert disc.conv1.weight.shape == (64, 19, 3, 3) and disc.conv4.weight.shape == (512, 256, 3, 3)
    y = disc(torch.randn(2, 19, 65, 113))
    assert y.shape == (2, 1, 5, 8)


# ---------------------------------------------------------------- pretrained weights


def test_imagenet_backbone_loader(imagenet, tmp_path, r101):
    path, src = imagenet
    copied = load_imagenet_backbone(r101, path)
    assert set(copied) == {k for k in src if not k.startswith("fc.")}
    sd = r101.state_dict()
    assert all(torch.equal(sd[k], src[k]) for k in copied)
    assert not any(k.startswith("layer5") for k in copied)

    nested = tmp_path / "nested.pth"  # the SimCLR layout, with a DataParallel prefix
    torch.save({"state_dict": {"module." + k: v for k, v in src.items()}}, nested)
    assert set(load_simclr_backbone(r101, nested)) == set(copied)


def test_imagenet_loader_errors(tmp_path, imagenet, r101):
    _, src = imagenet
    missing = tmp_path / "nope.pth"
    with pytest.raises(ValueError, match=r"nope\.pth: file not found"):
        load_imagenet_backbone(r101, missing)

    other = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(3), "bn1.num_batches_tracked": torch.tensor(0)}, other)
    with pytest.raises(ValueError, match=r"other\.pth: no tensor matches"):
        load_imagenet_backbone(r101, other)

    # same key names and shapes, but too few layer3 blocks (a ResNet-50 has 6)
    r50 = tmp_path / "r50.pth"
    torch.save({"model": {k: v for k, v in src.items()
                          if not (k.startswith("layer3.") and int(k.split(".")[1]) >= 6)}}, r50)
    with pytest.raises(ValueError, match=r"r50\.pth: covers .* first missing layer3\.6\."):
        load_imagenet_backbone(r101, r50)
    with pytest.raises(ValueError, match="no tensor matches"):
        load_imagenet_backbone(_small(), r50)
    with pytest.raises(ValueError, match="no 'state_dict' entry"):
        load_simclr_backbone(r101, r50)

    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match=r"garbage\.pth: cannot be read"):
        load_imagenet_backbone(r101, garbage)


def test_official_checkpoint_round_trip_resnet101(tmp_path, r101):
    src = {k: v.clone() for k, v in r101.state_dict().items()}
    torch.manual_seed(1)
    src["layer5.head.1.weight"].normal_()
    src["layer4.2.bn3.running_mean"].normal_()
    path = tmp_path / "from_gta5_to_cityscapes_on_deeplabv2_best_model.pkl"
    torch.save({"ResNet101": {"model_state": src, "objective_vectors": torch.zeros(19, 256)},
                "iter": 62000}, path)
    load_official_checkpoint(r101, path)
    got = r101.state_dict()
    assert all(torch.equal(got[k], src[k]) for k in src)


def test_official_checkpoint_mismatches(tmp_path):
    src = _small(19)
    path = tmp_path / "warmup.pkl"
    torch.save({"ResNet101": {"model_state": {"module." + k: v for k, v in src.state_dict().items()},
                              "objective_vectors": torch.zeros(19, 64)},
                "iter": 1000, "best_iou": np.float64(0.41)},  # numpy scalar: still weights_only
               path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(read_official_checkpoint(path)) == list(src.state_dict())
    dst = _small(19, seed=3)
    load_official_checkpoint(dst, path)
    assert _same_state(src, dst)
    with pytest.raises(ValueError, match=r"warmup\.pkl: checkpoint has 19 classes, model 16"):
        load_official_checkpoint(_small(16), path)
    with pytest.raises(ValueError, match=r"checkpoint lacks bn_pretrain \(bn_clr\)"):
        load_official_checkpoint(_small(19, bn_clr=True), path)

    clr = tmp_path / "stage2.pkl"
    torch.save({"ResNet101": {"model_state": _small(19, bn_clr=True).state_dict()}}, clr)
    with pytest.raises(ValueError, match=r"checkpoint has bn_pretrain \(bn_clr\)"):
        load_official_checkpoint(_small(19), clr)
    with torch.device("meta"):
        big = build_deeplabv2(19, "resnet101", bn_clr=True)
    with pytest.raises(ValueError, match=r"stage2\.pkl: conv1\.weight: checkpoint shape 16x3x7x7"):
        load_official_checkpoint(big, clr)

    notours = tmp_path / "plain.pkl"
    torch.save(src.state_dict(), notours)
    with pytest.raises(ValueError, match="not an official ProDA/CPSL checkpoint"):
        read_official_checkpoint(notours)


def test_official_checkpoint_with_pickled_objects(tmp_path):
    """Files holding arbitrary objects (e.g. an argparse Namespace) need a full unpickle, which
    runs only when the caller allows it for that file, with a warning; refused otherwise."""
    src = _small(19)
    path = tmp_path / "args.pkl"
    torch.save({"ResNet101": {"model_state": src.state_dict()}, "opt": argparse.Namespace(lr=1)}, path)
    with pytest.raises(ValueError, match=r"args\.pkl: holds pickled objects .* unpickling them can run code"):
        read_official_checkpoint(path)
    with pytest.warns(UserWarning, match="unpickled fully"):
        sd = read_official_checkpoint(path, allow_pickle=True)
    assert list(sd) == list(src.state_dict())


# ---------------------------------------------------------------- own checkpoint format


def test_save_load_model_round_trip(tmp_path):
    src = _small(16, bn_clr=True)
    src(torch.randn(2, 3, 64, 128))  # move BN running stats away from the init
    meta = {"arch": "small", "num_classes": 16, "bn_clr": True, "stage": "stage1",
            "iter": 10, "miou": 0.25, "classes": ["road"] * 16, "extra": {"a": None}}
    path = tmp_path / "ckpt" / "model.pt"
    save_model(path, src, meta)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temp left behind
    obj = torch.load(path, weights_only=True)
    assert set(obj) == {"model", "meta"}
    model, got = load_model(path, expect_num_classes=16)
    assert got == meta
    assert model.arch == "small" and model.num_classes == 16 and model.bn_clr
    assert _same_state(src, model)


def test_save_model_rejects_bad_meta(tmp_path):
    model = _small(19)
    with pytest.raises(ValueError, match="meta lacks bn_clr"):
        save_model(tmp_path / "a.pt", model, {"arch": "small", "num_classes": 19})
    with pytest.raises(TypeError, match="not a plain Python value"):
        save_model(tmp_path / "a.pt", model, {"arch": "small", "num_classes": 19, "bn_clr": False,
                                               "miou": np.float64(0.3)})
    with pytest.raises(ValueError, match="disagrees with the model: num_classes=16"):
        save_model(tmp_path / "a.pt", model, {"arch": "small", "num_classes": 16, "bn_clr": False})
    assert not (tmp_path / "a.pt").exists()


def test_load_model_errors(tmp_path):
    with pytest.raises(ValueError, match=r"missing\.pt: file not found"):
        load_model(tmp_path / "missing.pt")

    text = tmp_path / "text.pt"
    text.write_text("hello\n")
    with pytest.raises(ValueError, match=r"text\.pt: not a segcore checkpoint"):
        load_model(text)

    plain = tmp_path / "plain.pt"
    torch.save(_small().state_dict(), plain)
    with pytest.raises(ValueError, match=r"plain\.pt: not a segcore checkpoint"):
        load_model(plain)

    good = tmp_path / "good.pt"
    save_model(good, _small(19), {"arch": "small", "num_classes": 19, "bn_clr": False})
    with pytest.raises(ValueError, match=r"good\.pt: checkpoint has 19 classes, expected 16"):
        load_model(good, expect_num_classes=16)

    obj = torch.load(good, weights_only=True)
    obj["meta"]["arch"] = "resnet101"  # state of a small net, meta of the big one
    lying = tmp_path / "lying.pt"
    torch.save(obj, lying)
    with pytest.raises(ValueError, match=r"lying\.pt: architecture mismatch: "
                                         r"conv1\.weight: checkpoint shape 16x3x7x7, model 64x3x7x7"):
        load_model(lying)
    obj["meta"]["arch"] = "vgg16"
    torch.save(obj, lying)
    with pytest.raises(ValueError, match=r"lying\.pt: architecture mismatch: unknown arch 'vgg16'"):
        load_model(lying)


def test_parameter_counts():
    assert count_parameters(_small()) < 2_000_000
    with torch.device("meta"):
        assert count_parameters(build_deeplabv2(19, "resnet101")) == 65_063_568
