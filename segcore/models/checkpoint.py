"""segcore's own model checkpoint format.

A checkpoint is ``torch.save({"model": state_dict, "meta": meta})``, written atomically.
``meta`` holds plain Python values only (None, bool, int, float, str, and lists / tuples /
str-keyed dicts of them), so ``torch.load(weights_only=True)`` reads the whole file, and must
name the architecture: ``"arch"`` (a key of ``ARCHS``), ``"num_classes"`` and ``"bn_clr"``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..atomic import save_torch
from .deeplabv2 import ARCHS, DeepLabV2, build_deeplabv2, unwrap
from .weights import _first_line, strict_load

REQUIRED_META = ("arch", "num_classes", "bn_clr")


def _check_plain(value, where: str) -> None:
    # exact types: numpy scalars subclass float/int but weights_only=True refuses them
    if value is None or type(value) in (bool, int, float, str):
        return
    if type(value) in (list, tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if type(value) is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise TypeError(f"meta{where}: dict key {k!r} is not a str")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"meta{where}: {type(value).__name__} is not a plain Python value "
                    "(None, bool, int, float, str, list, tuple, dict)")


def save_model(path, model: nn.Module, meta: dict) -> None:
    """Write ``{"model": state_dict, "meta": meta}`` atomically to ``path``.

    ``meta`` must contain "arch", "num_classes" and "bn_clr", agreeing with the model."""
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    lacking = [k for k in REQUIRED_META if k not in meta]
    if lacking:
        raise ValueError(f"meta lacks {', '.join(lacking)}")
    _check_plain(meta, "")
    net = unwrap(model)
    if isinstance(net, DeepLabV2):
        built = {"arch": net.arch, "num_classes": net.num_classes, "bn_clr": net.bn_clr}
        wrong = [f"{k}={meta[k]!r} (model {v!r})" for k, v in built.items() if meta[k] != v]
        if wrong:
            raise ValueError(f"meta disagrees with the model: {', '.join(wrong)}")
    state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
    try:
        save_torch(path, {"model": state, "meta": dict(meta)})
    except OSError as e:  # e.g. disk full: name the file (no half-written file is left, see atomic_path)
        raise OSError(e.errno, f"{path}: cannot write checkpoint ({e.strerror or _first_line(e)})") from e


def load_model(path, map_location="cpu", expect_num_classes: int | None = None):
    """Rebuild the model a :func:`save_model` checkpoint describes and load it strictly.

    Returns ``(model, meta)``; the model is in train mode (as built) and on ``map_location``
    when that names a device. Every problem is a one-line ``ValueError("<path>: ...")``."""
    if not Path(path).is_file():
        raise ValueError(f"{path}: file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is "not a checkpoint"
        raise ValueError(f"{path}: not a segcore checkpoint ({_first_line(e)})") from None
    if not (isinstance(obj, dict) and isinstance(obj.get("model"), dict)
            and isinstance(obj.get("meta"), dict)):
        raise ValueError(f"{path}: not a segcore checkpoint (expected a dict with 'model' and 'meta')")
    meta, state = obj["meta"], obj["model"]
    lacking = [k for k in REQUIRED_META if k not in meta]
    if lacking:
        raise ValueError(f"{path}: not a segcore checkpoint (meta lacks {', '.join(lacking)})")
    arch, num_classes, bn_clr = meta["arch"], meta["num_classes"], meta["bn_clr"]
    from .ddb_net import DDB_ARCHS, build_ddb_net  # DDB's ResNetV1c networks
    from .uvpt_presets import UVPT_ARCHS  # Uni-UVPT's transformer networks (built below, when named)
    if arch not in ARCHS and arch not in DDB_ARCHS and arch not in UVPT_ARCHS:
        raise ValueError(f"{path}: architecture mismatch: unknown arch {arch!r} "
                         f"(known: {', '.join(sorted(ARCHS))})")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"{path}: not a segcore checkpoint (num_classes={num_classes!r})")
    if expect_num_classes is not None and num_classes != expect_num_classes:
        raise ValueError(f"{path}: checkpoint has {num_classes} classes, expected {expect_num_classes}")
    if arch in UVPT_ARCHS:
        from .uvpt import build_from_meta

        model = build_from_meta(meta)
    else:
        model = (build_ddb_net(num_classes, arch) if arch in DDB_ARCHS
                 else build_deeplabv2(num_classes, arch=arch, bn_clr=bool(bn_clr)))
    try:
        strict_load(model, state, path)
    except ValueError as e:
        raise ValueError(str(e).replace(f"{path}: ", f"{path}: architecture mismatch: ", 1)) from None
    if isinstance(map_location, (str, torch.device)):
        model = model.to(map_location)
    return model, meta


__all__ = ["save_model", "load_model", "REQUIRED_META"]
