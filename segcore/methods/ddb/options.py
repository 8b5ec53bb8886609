"""The option keys DDB's training steps read (beyond the runner's ``iterations``, ``batch_size``,
``checkpoint_every``, ``log_every``...), so a script can name a missing one before any work.
Their values and meaning live in the config schema (docs/methods/ddb.md lists the official ones)."""
from __future__ import annotations

COMMON = ("crop", "flip", "source_base_width", "target_base_width", "cat_max_ratio", "lr", "head_lr_mult",
          "weight_decay", "poly_power", "warmup_iterations", "warmup_ratio", "mean_over_valid",
          "jitter_strength", "jitter_p", "blur_p", "official_1d_blur", "pseudo_threshold")
ST = COMMON + ("ema_alpha", "ema_train_mode", "later_round_lr_mult")
#: the ST keys only one bridging path reads: a path's job gets only its own, so changing one
#: reruns that path (and what follows), not the other
PATH_KEYS = {"cu": ("cut_area",), "ca": ("classmix_official_ignore",)}
CKD = COMMON + ("official_full_resolution", "rectify_on_prob", "use_pl_weight")


def path_options(opts: dict, path: str) -> dict:
    """The ST options of ``path``: ``opts`` without the keys only the other path reads."""
    if path not in PATH_KEYS:
        raise ValueError(f"unknown DDB path {path!r} (known: {', '.join(PATH_KEYS)})")
    other = {k for p, keys in PATH_KEYS.items() if p != path for k in keys}
    return {k: v for k, v in opts.items() if k not in other}


def check_keys(opts: dict, keys, where: str = "--options") -> None:
    """One-line error naming the first option ``opts`` lacks."""
    missing = [k for k in keys if k not in opts]
    if missing:
        raise ValueError(f"{where}: lacks key '{missing[0]}' ({len(missing)} DDB option(s) missing)")


__all__ = ["COMMON", "ST", "CKD", "PATH_KEYS", "path_options", "check_keys"]
