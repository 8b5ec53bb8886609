import pytest
import torch
from torch import nn

from segcore.train.ema import EMATeacher, unwrap


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout2d(0.5)
        self.head = nn.Conv2d(4, 2, 1)
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)

    def forward(self, x):
        return self.head(self.drop(self.bn(self.conv(x)))) * self.frozen[None, :, None, None]


def _train_step(model, seed):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    model(torch.randn(4, 3, 6, 6, generator=g)).pow(2).mean().backward()
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        model.frozen.mul_(1.5)


def test_update_matches_formula_and_copies_buffers():
    torch.manual_seed(0)
    student = Tiny()
    ema = EMATeacher(student, momentum=0.9)
    before = {k: v.clone() for k, v in ema.module.named_parameters()}
    _train_step(student, 1)
    ema.update(student)
    for name, p in student.named_parameters():
        expected = 0.9 * before[name] + (1 - 0.9) * p.detach()
        torch.testing.assert_close(dict(ema.module.named_parameters())[name], expected)
    for (name, b_t), b_s in zip(ema.module.named_buffers(), student.buffers()):
        assert torch.equal(b_t, b_s), name
    assert ema.module.bn.num_batches_tracked.item() == 1
    # two steps: theta'' = m(m t0 + (1-m) s1) + (1-m) s2
    s1 = {k: v.detach().clone() for k, v in student.named_parameters()}
    _train_step(student, 2)
    ema.update(student)
    for name, p in student.named_parameters():
        expected = 0.9 * (0.9 * before[name] + 0.1 * s1[name]) + 0.1 * p.detach()
        torch.testing.assert_close(dict(ema.module.named_parameters())[name], expected)


def test_teacher_is_a_copy_and_gets_no_gradients():
    student = Tiny()
    ema = EMATeacher(student)
    assert ema.module is not student
    assert all(not p.requires_grad for p in ema.module.parameters())
    out = ema(torch.randn(2, 3, 6, 6))
    assert not out.requires_grad
    # a student loss that uses teacher outputs leaves the teacher without gradients
    x = torch.randn(2, 3, 6, 6)
    (student(x) - ema(x)).pow(2).mean().backward()
    assert all(p.grad is None for p in ema.module.parameters())


@pytest.mark.parametrize("train_mode", [True, False])
def test_teacher_mode_as_configured(train_mode):
    student = Tiny()
    ema = EMATeacher(student, train_mode=train_mode)
    student.eval()
    ema.module.train(not train_mode)          # somebody flips it: forward restores the mode
    x = torch.randn(4, 3, 6, 6)
    a, b = ema(x), ema(x)
    assert ema.module.training is train_mode and ema.module.bn.training is train_mode
    if train_mode:
        assert not torch.equal(a, b)          # dropout active
        assert ema.module.bn.num_batches_tracked.item() == 2   # batch-stat BN
    else:
        assert torch.equal(a, b)
        assert ema.module.bn.num_batches_tracked.item() == 0
    student.train()
    ema.update(student)
    assert ema.module.training is train_mode


def test_ema_buffers_without_copy():
    student = Tiny()
    ema = EMATeacher(student, momentum=0.5, copy_buffers=False)
    rm0 = ema.module.bn.running_mean.clone()
    _train_step(student, 3)
    ema.update(student)
    torch.testing.assert_close(ema.module.bn.running_mean, 0.5 * rm0 + 0.5 * student.bn.running_mean)
    assert ema.module.bn.num_batches_tracked.item() == student.bn.num_batches_tracked.item()


def test_wrapped_student_and_state_dict():
    student = Tiny()
    wrapped = nn.DataParallel(student)        # same .module convention as DDP
    assert unwrap(wrapped) is student
    ema = EMATeacher(wrapped, momentum=0.0)
    assert isinstance(ema.module, Tiny)
    _train_step(student, 4)
    ema.update(wrapped)                       # momentum 0: teacher == student
    for a, b in zip(ema.module.parameters(), student.parameters()):
        assert torch.equal(a, b)
    state = ema.state_dict()
    assert set(state) == set(student.state_dict())
    other = EMATeacher(Tiny())
    other.load_state_dict(state)
    for a, b in zip(other.module.state_dict().values(), state.values()):
        assert torch.equal(a, b)
