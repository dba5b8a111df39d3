"""Delay pattern and visual→audio alignment rules of vaura.model."""
import math

import torch

from vaura.model.alignment import reference_index, reference_steps_per_token, timestamp_index
from vaura.model.delay import build_delayed, revert_delayed, revert_logits

S = 99  # special id in these tests


def test_delayed_layout_matches_the_definition():
    codes = torch.tensor([[[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]])  # K=3, T=4
    expected = torch.tensor([[[S, 1, 2, 3, 4, S, S],
                              [S, S, 5, 6, 7, 8, S],
                              [S, S, S, 9, 10, 11, 12]]])
    assert torch.equal(build_delayed(codes, S), expected)


def test_build_then_revert_is_identity():
    codes = torch.randint(0, 50, (3, 9, 221))
    seq = build_delayed(codes, S)
    assert seq.shape == (3, 9, 230)  # T + K, with the initial special step
    assert torch.equal(revert_delayed(seq), codes)


def test_revert_logits_picks_the_step_that_predicts_each_frame():
    # output step s predicts seq[:, :, s + 1]; encode the step index in the logits to read it back
    b, k, t = 1, 3, 5
    steps = t + k - 1
    logits = torch.arange(steps, dtype=torch.float32).view(1, 1, steps, 1).expand(b, k, steps, 2)
    per_frame = revert_logits(logits, t)[..., 0]
    for q in range(k):
        assert per_frame[0, q].tolist() == [float(tt + q) for tt in range(t)]


def test_timestamp_alignment_integer_ratio():
    idx = timestamp_index(n_steps=20, n_visual=4, audio_frame_rate=50.0, visual_frame_rate=12.5)
    assert idx.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 8  # clamped to the last token


def test_timestamp_alignment_dac_rate_has_no_drift():
    rate = 44100 / 512  # 86.1328125 frames/s
    idx = timestamp_index(229, 32, rate, 12.5)
    for k in range(1, 32):
        first = math.ceil(k * 0.08 * rate)  # first frame whose time is >= the token's start time
        assert idx[first] == k and idx[first - 1] == k - 1
    assert idx[-1] == 31
    # the released rule drifts by one step at token 16 (step 111), timestamp does not
    ref = reference_index(229, 32, reference_steps_per_token(rate, 12.5))
    assert idx[111] == 16 and ref[111] == 15


def test_reference_alignment_is_seven_steps_then_empty():
    rate = 44100 / 512
    assert reference_steps_per_token(rate, 12.5) == 7
    idx = reference_index(229, 32, 7)
    assert idx[:224].tolist() == [s // 7 for s in range(224)]
    assert (idx[224:] == -1).all()  # learned "empty video" steps
