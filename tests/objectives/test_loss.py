"""The one loss: how streams of one or several forward passes reduce (objectives/loss.py)."""

from __future__ import annotations

import pytest
import torch

from cinetune.objectives import LossStream, ModelInputs, compute_loss, shift_sigmas


def _forward(*streams: LossStream) -> ModelInputs:
    return ModelInputs(kwargs={}, streams=list(streams))


def test_token_reduction_is_the_masked_mean_over_every_token_of_the_batch() -> None:
    pred = torch.zeros(2, 3, 4)
    target = torch.tensor([1.0, 2.0]).view(2, 1, 1).expand(2, 3, 4).clone()
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = compute_loss([_forward(LossStream("video", target, mask=mask))], [pred])
    # tokens: sample 0 has two with error 1, sample 1 one with error 4: (1 + 1 + 4) / 3
    assert float(out.total) == pytest.approx(2.0)
    assert float(out.streams["video"]) == pytest.approx(2.0)


def test_per_sample_reduction_averages_samples_and_adds_streams_per_sample() -> None:
    video_pred, audio_pred = torch.zeros(2, 3, 4), torch.zeros(2, 5, 2)
    video = torch.tensor([1.0, 2.0]).view(2, 1, 1).expand(2, 3, 4).clone()
    audio = torch.full((2, 5, 2), 3.0)
    video_mask = torch.tensor([[True, True, False], [True, False, False]])
    silent = torch.tensor([[True] * 5, [False] * 5])  # sample 1 has no sound: its audio counts 0, not NaN
    streams = [
        LossStream("video", video, output=0, mask=video_mask, per_sample=True),
        LossStream("audio", audio, output=1, mask=silent, per_sample=True),
    ]
    out = compute_loss([_forward(*streams)], [(video_pred, audio_pred)])
    # sample 0: video 1 + audio 9; sample 1: video 4 + audio 0 -> mean 7
    assert float(out.total) == pytest.approx(7.0)
    assert float(out.streams["video"]) == pytest.approx(2.5) and float(out.streams["audio"]) == pytest.approx(
        4.5
    )


def test_several_forward_passes_count_by_their_loss_tokens() -> None:
    """Kandinsky 5 splits a batch by caption length: one pass of 1 sample and one of 2 must give the same
    loss as a single pass over all 3."""
    preds = torch.randn(3, 6, 4)
    targets = torch.randn(3, 6, 4)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[:, :2] = False
    whole = compute_loss([_forward(LossStream("video", targets, mask=mask))], [preds]).total
    parts = [
        _forward(LossStream("video", targets[:1], mask=mask[:1])),
        _forward(LossStream("video", targets[1:], mask=mask[1:])),
    ]
    split = compute_loss(parts, [preds[:1], preds[1:]]).total
    assert float(split) == pytest.approx(float(whole), rel=1e-6)


def test_stream_weight_and_no_loss_token_at_all() -> None:
    pred, target = torch.zeros(1, 2, 1), torch.ones(1, 2, 1)
    weighted = compute_loss([_forward(LossStream("video", target, weight=0.25))], [pred])
    assert float(weighted.total) == pytest.approx(0.25) and float(weighted.streams["video"]) == pytest.approx(
        1.0
    )
    nothing = torch.zeros(1, 2, dtype=torch.bool)  # every token conditions: zero loss, no 0/0
    assert float(compute_loss([_forward(LossStream("video", target, mask=nothing))], [pred]).total) == 0.0


def test_prediction_is_read_in_the_target_layout_from_any_output_type() -> None:
    """Kandinsky returns channels-last (B, F, H, W, C) in a BaseOutput; targets are (B, N, C)."""
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    pred = torch.randn(1, 2, 3, 4, 5)
    target = pred.flatten(1, 3).clone()
    out = compute_loss([_forward(LossStream("video", target))], [Transformer2DModelOutput(sample=pred)])
    assert float(out.total) == 0.0


def test_static_shift_moves_uniform_sigmas_up_and_keeps_the_ends() -> None:
    sigmas = torch.tensor([0.0, 0.25, 0.5, 1.0])
    shifted = shift_sigmas(sigmas, 5.0)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert float(shifted[2]) == pytest.approx(5 * 0.5 / (1 + 4 * 0.5))
    n = torch.tensor([0.3])
    torch.testing.assert_close(
        shift_sigmas(torch.sigmoid(n), 5.0), torch.sigmoid(n + torch.log(torch.tensor(5.0)))
    )
