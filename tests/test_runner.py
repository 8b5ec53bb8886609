"""The shared training runner (segcore/train/runner.py) on a tiny regression problem: resume,
schedules, validation hook, progress lines, the final save."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from segcore.train import best, runner, schedule


class Stop(Exception):
    pass


def _options(**kw):
    return dict({"iterations": 12, "checkpoint_every": 4, "log_every": 3, "batch_size": 2, "lr": 0.1,
                 "poly_power": 0.9, "poly_horizon": None, "freeze_bn": False}, **kw)


class ToyBest(best.BestOnVal):
    """Best-on-val of the toy: ``scores(done)`` is the validation's score (key "score"); each
    validation records the model's state and mode in ``seen``."""

    def __init__(self, tmp_path, every, scores, seen, name="run"):
        super().__init__(val={"split": "val"}, num_classes=19, model_out=str(tmp_path / name / "model_best.pt"),
                         metrics_out=str(tmp_path / name / "metrics_best.json"), val_every=every)
        self.scores, self.seen, self.done = scores, seen, 0

    @property
    def key(self):
        return "score"

    def validate(self, model, device):
        model.eval()  # as a real evaluation does
        self.done += 1
        self.seen.append((self.done, model.training, {k: v.clone() for k, v in model.state_dict().items()}))
        return {"score": self.scores(self.done)}


def _job(tmp_path, opts, saved, best=None, seen_modes=None, name="run"):
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

        def save(finished):
            saved.update(state={k: v.clone() for k, v in model.state_dict().items()}, finished=finished)

        def checkpoint(path, meta):
            torch.save({"model": model.state_dict(), "meta": meta}, path)

        return runner.Training(model=model, parts={"model": model, "optimizer": opt}, optimizers=[opt],
                               batches=batches, step=step, save=save, checkpoint=checkpoint)

    return dict(build=build, options=opts, seed=3, workdir=str(tmp_path / name / "work"),
                settings={"name": "toy", "opts": opts}, device="cpu", best=best)


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
    seen, modes, saved = [], [], {}
    toy = ToyBest(tmp_path, 4, lambda i: float(-i), seen)
    runner.run_training(**_job(tmp_path, _options(iterations=10), saved, best=toy, seen_modes=modes),
                        log=lambda s: None)
    assert saved["finished"].validations == [[4, {"score": -1.0}], [8, {"score": -2.0}], [10, {"score": -3.0}]]
    # validate() switches the model to eval; the runner puts it back into train mode for the steps
    assert len(modes) == 10 and all(training for _, training in modes)
    assert [training for _, training, _ in seen] == [False] * 3


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_best_checkpoint_is_the_last_of_the_best_validated(tmp_path):
    """Validations at 2, 4, ..., 10 scoring 1, 3, 3, 2, None: the best is the one at 6 (a tie
    goes to the later checkpoint, as the official >=), written as model_best.pt with its
    metrics; no file is left in the workdir; the last checkpoint is what it is without
    validation (validating draws nothing from the RNGs)."""
    seen, saved = [], {}
    scores = {1: 1.0, 2: 3.0, 3: 3.0, 4: 2.0, 5: None}
    toy = ToyBest(tmp_path, 2, scores.get, seen)
    runner.run_training(**_job(tmp_path, _options(iterations=10), saved, best=toy), log=lambda s: None)
    kept = torch.load(toy.model_out, weights_only=True)
    assert _same(kept["model"], seen[2][2]) and not _same(kept["model"], seen[1][2])
    assert kept["meta"]["iterations"] == 6 and kept["meta"]["selected"]["iteration"] == 6
    metrics = json.loads(Path(toy.metrics_out).read_text())
    assert metrics["score"] == 3.0
    assert metrics["selected"] == {"on": "the evaluation split (val)", "metric": "score", "iteration": 6,
                                   "validated_at": [2, 4, 6, 8, 10]}
    assert not list((tmp_path / "run" / "work").glob("best_*"))
    plain = {}
    runner.run_training(**_job(tmp_path, _options(iterations=10), plain, name="plain"), log=lambda s: None)
    assert _same(plain["state"], saved["state"])


def test_killed_after_a_new_best_resumes_with_the_best_its_snapshot_knew(tmp_path):
    """Snapshots every 4, validations every 2. The first run finds a new best at 6 and dies at 7;
    the resumed run redoes 5-7 from the snapshot at 4 and (as a non-deterministic GPU run may)
    scores 6 lower: its best is the one at 4, the file the snapshot knew, not the killed run's."""
    first = {2: 1.0, 4: 2.0, 6: 5.0}
    seen = []
    toy = ToyBest(tmp_path, 2, lambda i: first[2 * i], seen)
    job = _job(tmp_path, _options(iterations=10), {}, best=toy)

    def stop(done, logs):
        if done == 7:
            raise Stop

    with pytest.raises(Stop):
        runner.run_training(**job, log=lambda s: None, on_iteration=stop)
    work = tmp_path / "run" / "work"
    assert sorted(f.name for f in work.glob("best_*")) == ["best_00000004.pt", "best_00000006.pt"]
    at4 = seen[1][2]
    resumed, logs = {}, []
    later = {6: 0.0, 8: 1.0, 10: 1.5}
    toy2 = ToyBest(tmp_path, 2, lambda i: later[4 + 2 * i], [])
    runner.run_training(**dict(job, best=toy2, build=_job(tmp_path, _options(iterations=10), resumed)["build"]),
                        log=logs.append)
    assert any("resumed" in line for line in logs)
    kept = torch.load(toy2.model_out, weights_only=True)
    assert _same(kept["model"], at4) and kept["meta"]["iterations"] == 4
    assert json.loads(Path(toy2.metrics_out).read_text())["selected"]["validated_at"] == [2, 4, 6, 8, 10]
    assert not list(work.glob("best_*"))


def test_a_fresh_start_removes_best_files_of_another_run(tmp_path):
    work = tmp_path / "run" / "work"
    work.mkdir(parents=True)
    (work / "best_00000002.pt").write_bytes(b"stale")
    toy = ToyBest(tmp_path, 0, lambda i: 1.0, [])
    runner.run_training(**_job(tmp_path, _options(iterations=4), {}, best=toy), log=lambda s: None)
    assert torch.load(toy.model_out, weights_only=True)["meta"]["iterations"] == 4  # validated at the end only
    assert not list(work.glob("best_*"))


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
