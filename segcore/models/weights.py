"""Load pretrained weights into a :class:`~segcore.models.deeplabv2.DeepLabV2`.

* ImageNet / SimCLR backbones: torchvision ResNet-101 key names; every tensor whose name
  and shape exist in the model is copied (what the official ``Deeplab()`` does), and the
  backbone parameters (conv1, bn1, layer1-4) must all be covered, so that a file of another
  architecture is refused instead of half-loaded.
* Official ProDA/CPSL checkpoints (``.pkl``): the state dict under
  ``["ResNet101"]["model_state"]``, loaded strictly.

Nothing is downloaded: every file comes from a configured path. Errors are one-line
``ValueError("<path>: <what is wrong>")``.
"""
from __future__ import annotations

import pickle
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn

from .deeplabv2 import unwrap

BACKBONE_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
HEAD_CLASSIFIER_KEY = "layer5.head.1.weight"


def _shape(t) -> str:
    return "x".join(str(d) for d in t.shape) if t.dim() else "scalar"


def _strip_module(sd: dict) -> OrderedDict[str, torch.Tensor]:
    out = OrderedDict()
    for k, v in sd.items():
        k = str(k)
        while k.startswith("module."):
            k = k[len("module."):]
        out[k] = v
    return out


def _require_file(path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{path}: file not found")
    return p


def _numpy_safe_globals() -> list:
    """Globals that pickled numpy scalars / arrays need (``best_iou`` in the official
    checkpoints is a numpy float64)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return []
    out = [np.dtype, np.ndarray]
    try:
        from numpy._core import multiarray as ma  # numpy >= 2
    except ImportError:  # pragma: no cover
        from numpy.core import multiarray as ma
    out += [ma.scalar, ma._reconstruct,
            (ma.scalar, "numpy.core.multiarray.scalar"),
            (ma._reconstruct, "numpy.core.multiarray._reconstruct")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _torch_load(path, *, allow_unsafe: bool = False):
    """``torch.load(weights_only=True)`` with numpy scalars/arrays allowed; then, only if
    ``allow_unsafe``, a full unpickle (with a warning). Errors become one-line
    ``ValueError``s naming the file."""
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - reported below as a one-line error
        first = e
    if allow_unsafe and isinstance(first, pickle.UnpicklingError):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path}: not a torch checkpoint ({_first_line(e)})") from None
        warnings.warn(f"{path}: holds objects that torch.load(weights_only=True) refuses; "
                      "it was unpickled fully (only do this for files you trust)", stacklevel=3)
        return obj
    if isinstance(first, pickle.UnpicklingError) and zipfile.is_zipfile(path):  # a torch.save file
        raise ValueError(f"{path}: holds pickled objects that torch.load(weights_only=True) refuses; unpickling"
                         " them can run code: allow it for this file only if you trust it"
                         f" ({_first_line(first)})") from None
    raise ValueError(f"{path}: cannot be read by torch.load(weights_only=True) "
                     f"({_first_line(first)})") from None


def _copy_matching(model: nn.Module, sd: dict, path) -> list[str]:
    net = unwrap(model)
    target = net.state_dict()
    sd = _strip_module(sd)
    copied = [k for k, v in sd.items()
              if k in target and isinstance(v, torch.Tensor) and v.shape == target[k].shape]
    if not any(not k.endswith(".num_batches_tracked") for k in copied):
        raise ValueError(f"{path}: no tensor matches the model by name and shape "
                         f"(wrong architecture for arch={getattr(net, 'arch', None)!r}?)")
    got = set(copied)
    needed = [n for n, _ in net.named_parameters() if n.startswith(BACKBONE_PREFIXES)]
    missing = [n for n in needed if n not in got]
    if missing:
        k = missing[0]
        why = (f"shape {_shape(sd[k])}, model {_shape(target[k])}" if k in sd else "absent")
        raise ValueError(f"{path}: covers {len(needed) - len(missing)} of {len(needed)} backbone "
                         f"parameters; first missing {k} ({why}; wrong architecture?)")
    net.load_state_dict({k: sd[k] for k in copied}, strict=False)
    return copied


def _unwrap_state_dict(obj, path, keys=("state_dict", "model")) -> dict:
    if isinstance(obj, dict):
        for k in keys:
            if isinstance(obj.get(k), dict):
                return obj[k]
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise ValueError(f"{path}: no state dict found (expected a dict of tensors, "
                     f"or one under {' / '.join(repr(k) for k in keys)})")


def load_imagenet_backbone(model: nn.Module, path) -> list[str]:
    """Copy a torchvision ResNet-101 ImageNet state dict (plain, or under "state_dict" /
    "model") into the model's backbone. Returns the copied keys."""
    _require_file(path)
    sd = _unwrap_state_dict(_torch_load(path), path)
    return _copy_matching(model, sd, path)


def load_simclr_backbone(model: nn.Module, path) -> list[str]:
    """Same matching on ``ckpt["state_dict"]`` (SimCLRv2 ResNet-101 converted to torchvision
    key names, the official ``--student_init simclr`` file). Returns the copied keys."""
    _require_file(path)
    obj = _torch_load(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise ValueError(f"{path}: no 'state_dict' entry (not a converted SimCLR checkpoint)")
    return _copy_matching(model, obj["state_dict"], path)


def read_official_checkpoint(path, allow_pickle: bool = False) -> OrderedDict[str, torch.Tensor]:
    """The model state dict of an official ProDA/CPSL checkpoint
    (``ckpt["ResNet101"]["model_state"]``, any "module." prefix stripped). A file that
    ``torch.load(weights_only=True)`` refuses (pickled objects) is read with a full unpickle
    only with ``allow_pickle`` (a warning says so), else refused with a one-line error."""
    _require_file(path)
    obj = _torch_load(path, allow_unsafe=allow_pickle)
    inner = obj.get("ResNet101") if isinstance(obj, dict) else None
    sd = inner.get("model_state") if isinstance(inner, dict) else None
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: not an official ProDA/CPSL checkpoint "
                         "(no ['ResNet101']['model_state'])")
    return _strip_module(sd)


def load_encoder_keys(encoder: nn.Module, sd: dict, target: dict, path, kind: str, size_kind: str) -> list:
    """Load ``sd`` into ``encoder`` where the keys of ``target`` (a subset of the encoder's
    state dict) must all be present with their shapes and ``sd`` may hold no other key; one-line
    errors naming ``path`` and the first offending key. ``kind`` names the file family ("MiT",
    "torchvision Swin") and ``size_kind`` its model family. Returns the encoder keys ``sd``
    left unset (those outside ``target``)."""
    for k, v in target.items():
        if k not in sd:
            raise ValueError(f"{path}: lacks {k} (not a {kind} file of this size?)")
        if not isinstance(sd[k], torch.Tensor) or sd[k].shape != v.shape:
            got = _shape(sd[k]) if isinstance(sd[k], torch.Tensor) else type(sd[k]).__name__
            raise ValueError(f"{path}: {k} has shape {got}, the encoder {_shape(v)} (another {size_kind} size?)")
    extra = [k for k in sd if k not in target]
    if extra:
        raise ValueError(f"{path}: unexpected key {extra[0]} ({len(extra)} in all; not a {kind} file?)")
    try:
        missing, _ = encoder.load_state_dict({k: sd[k] for k in target}, strict=False)
    except RuntimeError as e:  # pragma: no cover - shapes checked above
        raise ValueError(f"{path}: {_first_line(e)}") from None
    return missing


def state_dict_mismatch(model_sd: dict, sd: dict, what: str = "checkpoint") -> str | None:
    """First reason why ``sd`` does not load strictly into a model with ``model_sd``
    (class count and bn_clr first), or None when it fits."""
    k = HEAD_CLASSIFIER_KEY
    if k in model_sd and k in sd and isinstance(sd[k], torch.Tensor) and sd[k].dim() == 4:
        a, b = sd[k].shape[0], model_sd[k].shape[0]
        if a != b:
            return f"{what} has {a} classes, model {b}"
    has_bn = any(n.startswith("bn_pretrain.") for n in sd)
    model_bn = any(n.startswith("bn_pretrain.") for n in model_sd)
    if model_bn and not has_bn:
        return f"{what} lacks bn_pretrain (bn_clr), the model has it"
    if has_bn and not model_bn:
        return f"{what} has bn_pretrain (bn_clr), the model was built without it"
    missing = [n for n in model_sd if n not in sd]
    for n, v in model_sd.items():  # the first problem in model order
        w = sd.get(n)
        if w is None:
            return f"{what} lacks {n} ({len(missing)} model keys missing)"
        if not isinstance(w, torch.Tensor):
            return f"{what} entry {n} is a {type(w).__name__}, not a tensor"
        if w.shape != v.shape:
            return f"{n}: {what} shape {_shape(w)}, model {_shape(v)}"
    extra = [n for n in sd if n not in model_sd]
    if extra:
        return f"{what} has unexpected key {extra[0]} ({len(extra)} in all)"
    return None


def strict_load(model: nn.Module, sd: dict, path, what: str = "checkpoint") -> None:
    """Load ``sd`` strictly, raising ``ValueError("<path>: <first mismatch>")``. A missing
    BatchNorm ``num_batches_tracked`` (old PyTorch) is tolerated."""
    net = unwrap(model)
    model_sd = net.state_dict()
    sd = OrderedDict(sd)
    for n, v in model_sd.items():
        prefix = n[: -len("num_batches_tracked")]
        if n.endswith(".num_batches_tracked") and n not in sd and prefix + "running_mean" in sd:
            sd[n] = torch.zeros_like(v)
    problem = state_dict_mismatch(model_sd, sd, what)
    if problem:
        raise ValueError(f"{path}: {problem}")
    net.load_state_dict(sd, strict=True)


def load_official_checkpoint(model: nn.Module, path, allow_pickle: bool = False) -> None:
    """Strictly load an official ProDA/CPSL checkpoint into ``model`` (``allow_pickle``: as
    :func:`read_official_checkpoint`)."""
    strict_load(model, read_official_checkpoint(path, allow_pickle), path)


__all__ = [
    "load_imagenet_backbone", "load_simclr_backbone", "read_official_checkpoint",
    "load_official_checkpoint", "state_dict_mismatch", "strict_load",
]
