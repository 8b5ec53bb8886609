"""Image and label file I/O in the real datasets' formats.

Pillow reads SYNTHIA's 16-bit 3-channel label PNGs as 8-bit zeros, so those go through
``torchvision.io.decode_png(..., ImageReadMode.UNCHANGED)``, which returns the true uint16
values. 16-bit RGB PNGs cannot be written by Pillow either; ``write_png16`` encodes them
with zlib (the PNG format is simple enough that this is a dozen lines).
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_path


class BadInputError(ValueError):
    """Bad input file: the message names the file and what is wrong with it."""


def _open(path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: file not found")
    try:
        img = Image.open(path)
        img.load()
    except Exception as exc:  # truncated or not an image
        raise BadInputError(f"{path}: cannot decode image ({exc})") from None
    return img


def read_rgb(path) -> np.ndarray:
    """HxWx3 uint8."""
    return np.asarray(_open(path).convert("RGB"))


def read_label8(path) -> np.ndarray:
    """HxW uint8 of a single-channel or palette label PNG (the raw indices, not colours)."""
    img = _open(path)
    if img.mode not in ("L", "P"):
        raise BadInputError(f"{path}: expected an 8-bit single-channel or palette label PNG, got mode {img.mode}")
    return np.asarray(img)


def _decode_png_unchanged(path):
    """CxHxW torch tensor of a PNG at its stored bit depth (uint8 or uint16)."""
    import warnings

    from torchvision.io import ImageReadMode, decode_png, read_file

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: file not found")
    try:
        # torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec; they
        # are still the one reader of 16-bit RGB PNGs in our pinned stack.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_png(read_file(str(path)), ImageReadMode.UNCHANGED)
    except Exception as exc:
        raise BadInputError(f"{path}: cannot decode PNG ({exc})") from None


def read_png_unchanged(path) -> np.ndarray:
    """HxWxC array of a PNG at its stored bit depth (uint8 or uint16)."""
    import torch

    t = _decode_png_unchanged(path)
    if t.dtype == torch.uint16:
        return t.permute(1, 2, 0).numpy().astype(np.uint16)
    return t.permute(1, 2, 0).numpy()


def read_synthia_label(path) -> np.ndarray:
    """HxW uint16 SYNTHIA class ids (channel 0 of the 16-bit label PNG; a view, not a copy)."""
    import torch

    t = _decode_png_unchanged(path)
    if t.dtype != torch.uint16:
        raise BadInputError(f"{path}: expected a 16-bit SYNTHIA label PNG, got {str(t.dtype).replace('torch.', '')}"
                            f" ({t.shape[0]} channel(s))")
    return t[0].numpy()


def png_size(path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as exc:
        raise BadInputError(f"{path}: cannot read image header ({exc})") from None


def write_png(path, array, palette: list[int] | None = None) -> None:
    """Write a uint8 HxW (grey, or palette if given) or HxWx3 PNG atomically (``array`` may
    also be a Pillow image, saved as it is: no copy)."""
    img = array if isinstance(array, Image.Image) else Image.fromarray(np.ascontiguousarray(array))
    if palette is not None:
        img = img.convert("P") if img.mode != "P" else img
        img.putpalette(palette)
    try:
        with atomic_path(path) as tmp:
            img.save(tmp, format="PNG")
    except OSError as e:  # e.g. disk full: name the file (no half-written file is left)
        raise OSError(e.errno, f"{path}: cannot write PNG ({e.strerror or e})") from e


def write_png16(path, array: np.ndarray) -> None:
    """Write an HxWx3 uint16 array as a 16-bit RGB PNG (big-endian samples, filter 0)."""
    array = np.asarray(array)
    if array.dtype != np.uint16 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError("write_png16 takes an HxWx3 uint16 array")
    h, w, _ = array.shape
    rows = array.astype(">u2").reshape(h, w * 3).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16-bit, colour type 2 (RGB)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    try:
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(data)
    except OSError as e:
        raise OSError(e.errno, f"{path}: cannot write PNG ({e.strerror or e})") from e


def ensure_dir(path) -> Path:
    path = Path(path)
    os.makedirs(path, exist_ok=True)
    return path
