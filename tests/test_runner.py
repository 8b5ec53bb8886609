"""The shared training runner (segcore/train/runner.py) on a tiny regression problem: resume,
schedules, validation hook, progress lines, the final save."""
from __future__ import annotations

import math
import re

import pytest
import torch

from segcore.train import runner, schedule


class Stop(Exception):
    pass


def _options(**kw):
    return dict({"iterations": 12, "checkpoint_every": 4, "log_every": 3, "batch_size": 2, "lr": 0.1,
                 "poly_power": 0.9, "poly_horizon": None, "freeze_bn": False}, **kw)


def _job(tmp_path, opts, saved, validate_every=None, seen_modes=None, name="run"):
    """``run_training`` on a linear model fitted to a fixed random target; batches are a pure
    function of the iteration (as the real loaders)."""
    target = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))

    def build(accel, log):
        model = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Dropout(0.2))
        opt = torch.optim.SGD(model.parameters(), lr=opts["lr"])
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]

        def batches(start):
            it = start
            while True:
                x = torch.randn(opts["batch_size"], 5, generator=torch.Generator().manual_seed(100 + it))
                yield x, x @ target.T
                it += 1

        def step(batch):
            x, y = batch
            if seen_modes is not None:
                seen_modes.append(("step", model.training))
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()  # dropout: the global RNG is part of the resume state
            loss.backward()
            opt.step()
            return {"mse": loss.detach()}

        def validate(done):
            model.eval()  # as a real evaluation does
            seen_modes.append((done, model.training))
            return {"score": float(-done)}

        def save(finished):
            saved.update(state={k: v.clone() for k, v in model.state_dict().items()}, finished=finished)

        return runner.Training(model=model, parts={"model": model, "optimizer": opt}, optimizers=[opt],
                               batches=batches, step=step, save=save, validate=validate if validate_every else None)

    return dict(build=build, options=dict(opts, val_every=validate_every), seed=3,
                workdir=str(tmp_path / name / "work"), settings={"name": "toy", "opts": opts}, device="cpu")


def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
    opts = _options()
    ref = {}
    lines = []
    runner.run_training(**_job(tmp_path, opts, ref, name="ref"), log=lines.append)
    assert ref["finished"].iterations == 12 and [d for d, _ in ref["finished"].history] == [3, 6, 9, 12]
    # a person can read the progress: done/total, percent, rate, elapsed, ETA, timestamp, the losses
    line = lines[-1]
    assert re.match(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] it 12/12 \(100\.0%\) [\d.]+ it/s elapsed \d+:\d\d:\d\d "
                    r"eta \d+:\d\d:\d\d \| lr [\d.e+-]+ mse [\d.]+$", line), line

    cut = {}

    def stop(done, logs):
        if done == 6:
            raise Stop

    job = _job(tmp_path, opts, cut, name="cut")
    with pytest.raises(Stop):
        runner.run_training(**job, log=lambda s: None, on_iteration=stop)
    assert "state" not in cut  # nothing saved by a stopped run
    logs = []
    runner.run_training(**job, log=logs.append)
    assert any("resumed from" in s and "at iteration 4" in s for s in logs), logs
    assert all(torch.equal(ref["state"][k], cut["state"][k]) for k in ref["state"])
    assert cut["finished"].history == ref["finished"].history  # the history is part of the state
    assert not (tmp_path / "cut" / "work" / "resume.pt").exists()


def test_state_of_other_settings_is_not_reused(tmp_path):
    opts = _options()
    job = _job(tmp_path, opts, {}, name="x")

    def stop(done, logs):
        if done == 5:
            raise Stop

    with pytest.raises(Stop):
        runner.run_training(**job, log=lambda s: None, on_iteration=stop)
    other = dict(job, settings={"name": "toy", "opts": dict(opts, lr=0.2)})
    logs = []
    runner.run_training(**other, log=logs.append)
    assert not any("resumed" in s for s in logs)


def test_validation_every_n_iterations_and_back_in_train_mode(tmp_path):
    seen, saved = [], {}
    runner.run_training(**_job(tmp_path, _options(iterations=10), saved, validate_every=4, seen_modes=seen),
                        log=lambda s: None)
    assert [d for d, _ in seen if d != "step"] == [4, 8, 10]  # every 4 and at the end
    assert saved["finished"].validations == [[4, {"score": -4.0}], [8, {"score": -8.0}], [10, {"score": -10.0}]]
    # validate() switches the model to eval; the runner puts it back into train mode for the steps
    assert len(seen) == 13 and all(training for d, training in seen if d == "step")


@pytest.mark.parametrize("kind", ["poly", "warmup_poly", "cosine"])
def test_schedules(kind):
    opts = dict(iterations=100, poly_power=0.9, poly_horizon=None, schedule=kind, warmup_iterations=10,
                warmup_ratio=1e-6, min_lr_ratio=0.01)
    f = [schedule.lr_factor(i, opts) for i in range(101)]
    if kind == "poly":
        assert f[0] == 1.0 and f[50] == pytest.approx(0.5 ** 0.9) and f[100] == 0.0
    elif kind == "warmup_poly":
        # mmcv: the poly factor scaled by the linear warm-up, poly over the whole horizon
        assert f[0] == pytest.approx(1e-6) and f[5] == pytest.approx(0.95 ** 0.9 * (0.5 + 0.5e-6))
        assert f[10] == pytest.approx(0.9 ** 0.9) and f[100] == 0.0
    else:
        assert f[0] == pytest.approx(1e-6) and f[5] == pytest.approx(0.5 * (1 + math.cos(0.05 * math.pi)) * 0.99 / 2
                                                                      + 0.01 / 2, rel=1e-4)
        assert f[10] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(0.1 * math.pi)))
        assert f[100] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # decays after the warm-up
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule.lr_factor(0, dict(opts, schedule="step"))
