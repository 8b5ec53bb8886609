"""Class prototypes of ProDA: per-image class means and the two ways the official code folds
them into the prototype bank (docs/methods/proda.md, Initial prototypes and Stage 1, step 7).

* ``class_means`` replaces the official ``calculate_mean_vector`` (a double Python loop over
  images and classes with ``.item()`` syncs) by one ``scatter_add``.
* ``running_mean_update`` is ``update_objective_SingleVector(..., 'mean')`` of
  ``calc_prototype.py``: an image-level running mean whose count is capped (beyond the cap it
  is an EMA with weight ``1/(cap+1)``).
* ``moving_average_update`` is the stage-1 ``--moving_prototype`` update
  (``start_mean=False``): ``eta_k <- (1-m) eta_k + m v`` applied image after image, computed
  here in closed form for all classes at once.

Both updates are pure functions of (state, means, valid); under DDP the caller all-gathers
``means``/``valid`` (in rank order) first, so every rank holds the same bank.
"""
from __future__ import annotations

from pathlib import Path

import torch

DEFAULT_MIN_PIXELS = 10
DEFAULT_CAP = 3000


def class_means(feat: torch.Tensor, labels: torch.Tensor, num_classes: int,
                min_pixels: int = DEFAULT_MIN_PIXELS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean feature of every class.

    feat: (N, D, h, w); labels: (N, h, w) long, values in [0, num_classes) or IGNORE_INDEX
    (any other value is ignored too). Returns ``means`` (N, C, D) float32 and ``valid``
    (N, C) bool, where valid means the class has at least ``min_pixels`` pixels in the image
    (the official code requires >= 10). Means of invalid entries are 0.
    Accumulation is in float32 whatever the dtype of ``feat``.
    """
    if feat.dim() != 4 or labels.dim() != 3:
        raise ValueError(f"feat must be (N,D,h,w) and labels (N,h,w); got {tuple(feat.shape)}, {tuple(labels.shape)}")
    n, d, h, w = feat.shape
    if labels.shape != (n, h, w):
        raise ValueError(f"labels {tuple(labels.shape)} do not match feat {tuple(feat.shape)}")
    c = int(num_classes)
    lab = labels.reshape(n, 1, h * w).long()
    # everything that is not a class (IGNORE_INDEX included) goes to a dump bin c
    lab = torch.where((lab >= 0) & (lab < c), lab, torch.full_like(lab, c))
    src = feat.reshape(n, d, h * w).float()
    sums = src.new_zeros(n, d, c + 1).scatter_add_(2, lab.expand(n, d, h * w), src)
    counts = torch.zeros(n, c + 1, dtype=torch.long, device=feat.device)
    counts.scatter_add_(1, lab[:, 0], torch.ones_like(lab[:, 0]))
    sums, counts = sums[:, :, :c].transpose(1, 2), counts[:, :c]  # (N, C, D), (N, C)
    valid = counts >= max(int(min_pixels), 1)
    means = torch.where(valid[..., None], sums / counts.clamp(min=1)[..., None].float(), torch.zeros_like(sums))
    return means, valid


def class_means_from_logits(feat: torch.Tensor, logits: torch.Tensor,
                            min_pixels: int = DEFAULT_MIN_PIXELS) -> tuple[torch.Tensor, torch.Tensor]:
    """``class_means`` over the model's own argmax, as ``calc_prototype.py`` and the stage-1
    moving update do. ``logits`` (N, C, h, w) must already be at the resolution of ``feat``."""
    return class_means(feat, logits.argmax(dim=1), logits.shape[1], min_pixels)


def _usable(means: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    # The official update_objective_SingleVector returns early on a vector whose sum is
    # exactly 0; reproduced here (it only matters for degenerate all-zero features).
    return valid.bool() & (means.sum(dim=-1) != 0)


def running_mean_update(protos: torch.Tensor, counts: torch.Tensor, means: torch.Tensor,
                        valid: torch.Tensor, cap: int = DEFAULT_CAP) -> tuple[torch.Tensor, torch.Tensor]:
    """Official image-level running mean (``calc_prototype.py``), images in order.

    For each image n and each class k with ``valid[n, k]``:
    ``eta_k <- (eta_k * n_k + v) / (n_k + 1)``; ``n_k <- min(n_k + 1, cap)``.
    Vectorised over classes; a loop over the (few) images keeps the official order and
    floating-point behaviour. Returns new (protos (C, D), counts (C,) long); inputs untouched.
    """
    means = means.to(device=protos.device, dtype=protos.dtype)
    use = _usable(means, valid.to(protos.device))
    protos = protos.clone()
    counts = counts.to(protos.device).long().clone()
    for i in range(means.shape[0]):
        k = use[i]
        nk = counts.to(protos.dtype)[:, None]
        new = (protos * nk + means[i]) / (nk + 1)
        protos = torch.where(k[:, None], new, protos)
        counts = torch.where(k, (counts + 1).clamp(max=cap), counts)
    return protos, counts


def moving_average_update(protos: torch.Tensor, means: torch.Tensor, valid: torch.Tensor,
                          momentum: float) -> torch.Tensor:
    """Official stage-1 moving prototypes: for each image n in order and each class k with
    ``valid[n, k]``: ``eta_k <- (1 - m) eta_k + m v_{n,k}``.

    Closed form per class, with the K_k valid images of class k numbered j = 0..K_k-1 in order:
    ``eta_k <- (1-m)^K_k eta_k + sum_j m (1-m)^(K_k-1-j) v_j``. Returns the new (C, D) tensor.
    """
    means = means.to(device=protos.device, dtype=protos.dtype)
    use = _usable(means, valid.to(protos.device))
    m = float(momentum)
    k_total = use.sum(dim=0)                          # (C,)
    rank = use.long().cumsum(dim=0) - 1               # (N, C): j of image n among class k's images
    exponent = (k_total[None, :] - 1 - rank).clamp(min=0).to(protos.dtype)
    coef = torch.where(use, m * (1.0 - m) ** exponent, torch.zeros_like(exponent))   # (N, C)
    means = torch.where(use[..., None], means, torch.zeros_like(means))
    decay = (1.0 - m) ** k_total.to(protos.dtype)     # (C,)
    return decay[:, None] * protos + torch.einsum("nk,nkd->kd", coef, means)


class PrototypeBank:
    """Prototypes ``protos`` (C, D) and the official per-class vector counts ``counts`` (C,)."""

    def __init__(self, num_classes: int, dim: int, device=None, dtype=torch.float32):
        self.protos = torch.zeros(num_classes, dim, device=device, dtype=dtype)
        self.counts = torch.zeros(num_classes, dtype=torch.long, device=device)

    @classmethod
    def from_protos(cls, protos: torch.Tensor, counts: torch.Tensor | None = None) -> PrototypeBank:
        """Wrap an existing (C, D) tensor, e.g. the official ``prototypes_on_cityscapes_from_deeplabv2``."""
        bank = cls(protos.shape[0], protos.shape[1], device=protos.device, dtype=protos.dtype)
        bank.protos = protos.detach().clone()
        if counts is not None:
            bank.counts = counts.detach().to(protos.device).long().clone()
        return bank

    @property
    def num_classes(self) -> int:
        return self.protos.shape[0]

    @property
    def dim(self) -> int:
        return self.protos.shape[1]

    def to(self, device) -> PrototypeBank:
        self.protos = self.protos.to(device)
        self.counts = self.counts.to(device)
        return self

    @torch.no_grad()
    def add_image_means(self, means: torch.Tensor, valid: torch.Tensor, cap: int = DEFAULT_CAP) -> None:
        """Initial prototypes: the official capped running mean over per-image class means."""
        self.protos, self.counts = running_mean_update(self.protos, self.counts, means.detach(), valid, cap)

    @torch.no_grad()
    def moving_update(self, means: torch.Tensor, valid: torch.Tensor, momentum: float,
                      cap: int = DEFAULT_CAP) -> None:
        """Stage-1 moving prototypes (momentum m = 1e-4 in ProDA). The counts advance as in the
        official code (capped), although this update does not read them."""
        means = means.detach()
        use = _usable(means.to(self.protos.device), valid.to(self.protos.device))
        self.protos = moving_average_update(self.protos, means, valid, momentum)
        self.counts = (self.counts + use.sum(dim=0)).clamp(max=cap)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"protos": self.protos.detach().clone(), "counts": self.counts.detach().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        protos, counts = state["protos"], state["counts"]
        if protos.dim() != 2 or counts.shape != (protos.shape[0],):
            raise ValueError(f"bad prototype state: protos {tuple(protos.shape)}, counts {tuple(counts.shape)}")
        self.protos = protos.detach().to(self.protos.device, self.protos.dtype).clone()
        self.counts = counts.detach().to(self.protos.device).long().clone()


def load_prototypes(path, num_classes: int, dim: int | None = None) -> torch.Tensor:
    """The (C, D) ``protos`` tensor of a prototypes file (``init_prototypes``, ``ddb_prototypes``);
    one-line errors naming the file when it is missing, unreadable, of another class count or
    feature width, or not finite."""
    if not Path(path).is_file():
        raise ValueError(f"{path}: prototypes file not found")
    try:
        protos = torch.load(path, map_location="cpu", weights_only=True)["protos"]
    except Exception as exc:  # noqa: BLE001 - any unreadable file is "not a prototypes file"
        raise ValueError(f"{path}: not a prototypes file ({type(exc).__name__})") from None
    if not isinstance(protos, torch.Tensor) or protos.dim() != 2:
        raise ValueError(f"{path}: not a prototypes file (expected a (classes, dim) tensor 'protos')")
    if protos.shape[0] != num_classes:
        raise ValueError(f"{path}: prototypes for {protos.shape[0]} classes, the chain has {num_classes}")
    if dim is not None and protos.shape[1] != dim:
        raise ValueError(f"{path}: prototypes of dim {protos.shape[1]}, the model's features have {dim}")
    if not bool(torch.isfinite(protos).all()):
        raise ValueError(f"{path}: prototypes with non-finite values")
    return protos
