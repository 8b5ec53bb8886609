"""Weights for :class:`~segcore.models.ddb_net.DDBNet` from released files.

* ImageNet: mmseg's ``resnet101_v1c`` file (``open-mmlab://resnet101_v1c``), whose keys are the
  backbone's own (``stem.0.weight``, ``layer1.0.conv1.weight``, ... plus the classifier
  ``fc.*``), plain or under ``"state_dict"``, optionally prefixed ``backbone.``. Every tensor of
  our backbone (parameters and BN statistics) must be in the file with its shape; ``fc.*`` is
  dropped; anything else is refused, so a file of another architecture (e.g. torchvision's
  7x7-stem ResNet-101) is never half-loaded. The head keeps its own initialisation.
* Official DDB checkpoints (mmseg ``iter_*.pth``): ``ckpt["state_dict"]`` holds the networks of
  the run under a prefix: ``model.`` (an ST student), ``ema_model.`` (its teacher),
  ``stu_model.`` / ``cu_model.`` / ``ca_model.`` (CKD's student and teachers). One of them is
  loaded strictly.

Nothing is downloaded; errors are one-line ``ValueError("<path>: ...")``.
"""
from __future__ import annotations

from collections import OrderedDict

import torch.nn as nn

from .deeplabv2 import unwrap
from .weights import _require_file, _shape, _strip_module, _torch_load, _unwrap_state_dict, strict_load

CLASSIFIER_PREFIX = "fc."
OFFICIAL_PREFIXES = ("model.", "ema_model.", "stu_model.", "cu_model.", "ca_model.")


def read_v1c_imagenet(path) -> OrderedDict:
    """The backbone state dict of a ``resnet101_v1c`` file (prefixes stripped, ``fc.*`` dropped)."""
    _require_file(path)
    sd = _strip_module(_unwrap_state_dict(_torch_load(path), path, keys=("state_dict",)))
    out = OrderedDict()
    for k, v in sd.items():
        if k.startswith("backbone."):
            k = k[len("backbone."):]
        if not k.startswith(CLASSIFIER_PREFIX):
            out[k] = v
    return out


def load_v1c_imagenet(model: nn.Module, path) -> list[str]:
    """Copy a ``resnet101_v1c`` ImageNet file into ``model.backbone``; returns the keys copied."""
    sd = read_v1c_imagenet(path)
    backbone = unwrap(model).backbone
    target = backbone.state_dict()
    for k, v in target.items():
        if k not in sd:
            if k.endswith(".num_batches_tracked"):
                continue
            raise ValueError(f"{path}: lacks backbone key {k} ({len([n for n in target if n not in sd])} missing; "
                             "not a resnet_v1c file of this depth?)")
        if tuple(sd[k].shape) != tuple(v.shape):
            raise ValueError(f"{path}: {k} has shape {_shape(sd[k])}, the model {_shape(v)} (wrong architecture?)")
    extra = [k for k in sd if k not in target]
    if extra:
        raise ValueError(f"{path}: unexpected key {extra[0]} ({len(extra)} in all; not a resnet_v1c file?)")
    backbone.load_state_dict(sd, strict=False)
    return list(sd)


def read_official_ddb(path, prefix: str = "model.", allow_pickle: bool = False) -> OrderedDict:
    """One network of an official DDB checkpoint: the entries of ``state_dict`` under ``prefix``
    (one of ``OFFICIAL_PREFIXES``), with the prefix removed. A file holding pickled objects
    (mmcv's ``meta``) is read with a full unpickle only with ``allow_pickle``."""
    if prefix not in OFFICIAL_PREFIXES:
        raise ValueError(f"prefix must be one of {', '.join(OFFICIAL_PREFIXES)}, got {prefix!r}")
    _require_file(path)
    obj = _torch_load(path, allow_unsafe=allow_pickle)
    sd = obj.get("state_dict") if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: not an official DDB checkpoint (no 'state_dict')")
    out = OrderedDict((k[len(prefix):], v) for k, v in _strip_module(sd).items() if k.startswith(prefix))
    if not out:
        have = sorted({k.split(".", 1)[0] + "." for k in sd})
        raise ValueError(f"{path}: no network under {prefix!r} (prefixes present: {', '.join(have)})")
    return out


def load_official_ddb(model: nn.Module, path, prefix: str = "model.", allow_pickle: bool = False) -> None:
    """Strictly load one network of an official DDB checkpoint into ``model``."""
    strict_load(model, read_official_ddb(path, prefix, allow_pickle), path, what=f"network {prefix!r}")


__all__ = ["read_v1c_imagenet", "load_v1c_imagenet", "read_official_ddb", "load_official_ddb",
           "OFFICIAL_PREFIXES"]
