import math

import pytest
import torch

from vaura.train.lr import WarmupCosine, build_scheduler


def test_warmup_is_linear_then_cosine_reaches_min_ratio():
    f = WarmupCosine(warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == pytest.approx(1.0)
    # half-way through the decay the cosine is at the mid point between 1 and the floor
    assert f(60) == pytest.approx(0.55)
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    decay = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_scheduler_drives_optimizer_lr_and_state_is_plain():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=2.0)
    sched = build_scheduler(opt, warmup_steps=4, total_steps=8, min_ratio=0.5)
    seen = []
    for _ in range(8):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert seen[4] == pytest.approx(2.0) and seen[-1] == pytest.approx(1.0 + 0.5 * (1 + math.cos(math.pi * 3 / 4)))
    state = sched.state_dict()
    assert state["lr_lambdas"][0] == {"warmup_steps": 4, "total_steps": 8, "min_ratio": 0.5}


def test_bad_schedule_is_rejected():
    with pytest.raises(ValueError, match="min_ratio"):
        WarmupCosine(10, 100, 1.5)
