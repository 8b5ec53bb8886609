"""Semantic connectivity correction (SCC): which components of the PSA labels to keep, drop or
relabel, from the connectivity classifier's per-component loss and probabilities.

* ``gmm_rule`` (the paper): a two-component Gaussian mixture fitted by EM to the per-component
  losses (scikit-learn); the noise posterior of a component is the posterior of the
  higher-mean component. Clean (kept with its PSA class): posterior < ``noise_threshold``
  (0.6). Noisy components whose largest class probability exceeds ``relabel_threshold`` (0.95)
  are relabelled to that class; the other noisy ones are dropped. The losses are min-max
  normalised first and the mixture uses DivideMix's settings (10 EM iterations, tol 1e-2,
  reg_covar 5e-4).
* ``median_rule`` (the released code): every component takes the classifier's predicted class;
  ``mode="both_loss"`` drops it when its loss exceeds both its predicted class's median loss
  and the mean of those class medians over all components; ``mode="loss"`` drops it when its
  loss exceeds the median loss of all components.

Both return one label per component (255 = dropped).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..pseudo.store_base import IGNORE

RULES = ("gmm", "median")
MEDIAN_MODES = ("both_loss", "loss")


def noise_posterior(loss: np.ndarray, seed: int = 0) -> np.ndarray:
    """Posterior of the high-loss component of a 2-component GMM on ``loss`` (min-max normalised)."""
    from sklearn.mixture import GaussianMixture

    loss = np.asarray(loss, dtype=np.float64).reshape(-1)
    if loss.size < 2 or np.ptp(loss) == 0:
        return np.zeros(loss.size)
    x = ((loss - loss.min()) / np.ptp(loss)).reshape(-1, 1)
    gmm = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=seed).fit(x)
    return gmm.predict_proba(x)[:, int(np.argmax(gmm.means_.reshape(-1)))]


def gmm_rule(loss, probs, psa_class, noise_threshold: float = 0.6, relabel_threshold: float = 0.95,
             seed: int = 0) -> np.ndarray:
    probs = np.asarray(probs)
    eta = noise_posterior(loss, seed)
    out = np.full(len(eta), IGNORE, dtype=np.int64)
    clean = eta < noise_threshold
    out[clean] = np.asarray(psa_class)[clean]
    sure = ~clean & (probs.max(axis=1) > relabel_threshold)
    out[sure] = probs.argmax(axis=1)[sure]
    return out


def median_rule(loss, probs, mode: str = "both_loss") -> np.ndarray:
    if mode not in MEDIAN_MODES:
        raise ValueError(f"unknown median-rule mode {mode!r} (choose from {', '.join(MEDIAN_MODES)})")
    loss = np.asarray(loss, dtype=np.float64)
    pred = np.asarray(probs).argmax(axis=1)
    if mode == "loss":
        drop = loss > np.median(loss)
    else:
        medians = {c: np.median(loss[pred == c]) for c in np.unique(pred)}
        own = np.array([medians[c] for c in pred])
        drop = (loss > own) & (loss > own.mean())
    return np.where(drop, IGNORE, pred)


def decide(rule: str, loss, probs, psa_class, opts: dict) -> np.ndarray:
    if rule == "gmm":
        return gmm_rule(loss, probs, psa_class, opts.get("noise_threshold", 0.6),
                        opts.get("relabel_threshold", 0.95), opts.get("gmm_seed", 0))
    if rule == "median":
        return median_rule(loss, probs, opts.get("median_mode", "both_loss"))
    raise ValueError(f"unknown SCC rule {rule!r} (choose from {', '.join(RULES)})")


@torch.no_grad()
def score(model, dataset, batch_size: int = 64, device="cpu", num_workers: int = 0):
    """(probs [N, K], loss [N]) of every component: softmax and plain cross-entropy against its
    PSA class, in eval mode, no flip."""
    was = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    probs, losses = [], []
    try:
        for b in loader:
            logits = model(b["image"].to(device), b["mask"].to(device)).float()
            target = b["label"].to(device)
            probs.append(F.softmax(logits, 1).cpu())
            losses.append(F.cross_entropy(logits, target, reduction="none").cpu())
    finally:
        model.train(was)
    k = getattr(getattr(model, "fc", None), "out_features", 0)
    if not probs:
        return np.zeros((0, k)), np.zeros(0)
    return torch.cat(probs).numpy(), torch.cat(losses).numpy()
