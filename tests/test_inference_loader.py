"""The inference jobs (evaluation, pseudo-labels, prototypes) read their images through loader
workers (``segcore.data.datasets.inference_loader``, ``--workers`` of their scripts): the
workers really load, and what the job writes is the same with and without them."""
from __future__ import annotations

import h5py
import pytest
import torch

import segcore.data.datasets as datasets_module
from segcore.data.datasets import SegmentationDataset
from segcore.evaluate import evaluate
from segcore.methods.ddb.prototypes import path_prototypes
from segcore.models.deeplabv2 import build_deeplabv2
from segcore.pseudo.generate import generate_hard, generate_soft
from segcore.pseudo.initial_prototypes import initial_prototypes
from segcore.pseudo.store import HardWriter, SoftWriter
from segcore.train.distributed import loader_workers
from workflow_helpers import converted_gta5_cityscapes

WORKERS = 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("inference_loader")
    _, target = converted_gta5_cityscapes(base)
    torch.manual_seed(0)
    model = build_deeplabv2(19, "small").eval()
    return base, target, model


@pytest.fixture
def loaders(monkeypatch):
    """The worker count of every loader the inference code opens."""
    seen = []
    real = torch.utils.data.DataLoader

    def recording(*args, **kwargs):
        seen.append(kwargs.get("num_workers", 0))
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets_module.torch.utils.data, "DataLoader", recording)
    return seen


def _images(target):
    return SegmentationDataset(target["manifest"], target["split"], 19, resize=target["resize"], with_labels=False)


def _both(run, loaders):
    """``run(num_workers)`` without and with workers; the second must have opened a loader with them."""
    plain = run(0)
    loaders.clear()
    with_workers = run(WORKERS)
    assert loaders == [WORKERS]
    return plain, with_workers


def test_evaluation_reads_through_workers(setup, loaders):
    _, target, model = setup
    plain, workers = _both(lambda n: evaluate(model, target["manifest"], "val", 19, resize=target["resize"],
                                              batch_size=1, num_workers=n), loaders)
    assert plain == workers


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_pseudo_labels_read_through_workers(setup, loaders, kind):
    base, target, model = setup
    ds = _images(target)

    def run(n):
        path = base / f"{kind}_{n}.h5"
        if kind == "soft":
            with torch.no_grad():
                hw = model(torch.zeros(1, 3, *ds.load_image(0).shape[-2:]))["out"].shape[-2:]
            with SoftWriter(path, ds.keys, 19, hw) as w:
                generate_soft(model, ds, w, batch_size=2, num_workers=n)
        else:
            with HardWriter(path, ds.keys, ds.load_image(0).shape[-2:], num_classes=19, conf_encoding="float16") as w:
                generate_hard(model, ds, w, batch_size=2, num_workers=n)
        with h5py.File(path) as f:
            return {k: f[k][()].tobytes() for k in f if isinstance(f[k], h5py.Dataset) and f[k].dtype.kind != "O"}

    plain, workers = _both(run, loaders)
    assert plain and plain == workers


@pytest.mark.parametrize("which", ["proda", "ddb"])
def test_prototypes_read_through_workers(setup, loaders, which):
    _, target, model = setup
    ds = _images(target)
    if which == "proda":
        plain, workers = _both(lambda n: initial_prototypes(model, ds, 2, min_pixels=1, num_workers=n), loaders)
    else:
        plain, workers = _both(lambda n: path_prototypes(model, ds, 2, min_pixels=1, num_workers=n), loaders)
    assert torch.equal(plain.protos, workers.protos) and torch.equal(plain.counts, workers.counts)


def test_worker_default_follows_the_device():
    assert loader_workers(None, on="cpu") == 0          # on the CPU the cores compute
    assert loader_workers(None, on="cuda") >= 1         # a GPU job decodes ahead
    assert loader_workers(3, on="cpu") == 3             # --workers wins
