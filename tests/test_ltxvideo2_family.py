"""The ltxvideo2 family on tiny real diffusers / transformers classes: text cache, inputs, loss, LoRA,
export."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from diffusers import LTX2Pipeline
from peft import LoraConfig
from safetensors.torch import load_file

from cinetune.config import TrainConfig
from cinetune.export.lora import COMFYUI_FILE, DIFFUSERS_FILE, save_diffusers_lora
from cinetune.models.ltxvideo.family import pack_latents
from cinetune.models.ltxvideo2 import tiny
from cinetune.models.ltxvideo2.av_timesteps import has_av_cross_timesteps
from cinetune.models.ltxvideo2.family import AudioInputs, LTX2Family
from cinetune.models.ltxvideo2.flow import first_frame_mask, stretched_logit_normal
from cinetune.models.ltxvideo2.text import PROJ_KEY, run_connectors
from cinetune.models.registry import build_family
from cinetune.objectives.loss import masked_mse_per_sample
from cinetune.training.batches import Batch
from cinetune.training.step import training_loss


@pytest.fixture(scope="module")
def tiny_ltx2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-ltx2") / "LTX-2-tiny")


def _family(path: Path | None = None) -> LTX2Family:
    return build_family("ltxvideo2", "tiny", str(path) if path else None)


def test_text_cache_keeps_real_tokens_and_rebuilds_the_pipeline_context(tiny_ltx2_dir: Path) -> None:
    """Cached real-token projections -> frozen connectors == LTX2Pipeline's context from 1024 tokens."""
    family = _family(tiny_ltx2_dir)
    tokenizer, encoder = family.load_text_encoder(torch.float32)
    captions = ["a red cat walks in the rain", "dog"]
    items = family.encode_text(tokenizer, encoder, captions, 1024)
    assert [item[PROJ_KEY].shape for item in items] == [
        (8, tiny.TEXT_DIM),
        (2, tiny.TEXT_DIM),
    ]  # <bos> + words
    pipe = LTX2Pipeline.from_pretrained(tiny_ltx2_dir)
    stacked, mask = pipe._get_gemma_prompt_embeds(
        captions, max_sequence_length=1024, device=torch.device("cpu")
    )
    assert stacked.shape == (
        2,
        1024,
        tiny.TEXT_DIM * (tiny.TEXT_LAYERS + 1),
    )  # what a naive cache would store
    with torch.no_grad():
        ref_video, ref_audio, ref_mask = pipe.connectors(stacked, mask, padding_side="left")
        connectors = family.connectors(torch.device("cpu"), torch.float32)
        video, audio, ctx_mask = run_connectors(connectors, family.collate_text(items))
    torch.testing.assert_close(video, ref_video)
    torch.testing.assert_close(audio, ref_audio)
    assert torch.equal(ctx_mask, ref_mask)


def test_61_frames_become_57_with_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    rule = LTX2Family.frame_rule
    with caplog.at_level(logging.WARNING):
        assert rule.adjust_frames(61, "video.num_frames") == 57
    message = caplog.text
    assert "57" in message and "8x" in message and "(frames - 1) % 4" in message
    assert [rule.frames_down(n) for n in (49, 57, 97, 121, 120)] == [49, 57, 97, 121, 113]


def test_first_frame_latents_are_the_image_latents(tiny_ltx2_dir: Path) -> None:
    """The causal VAE's first latent frame encodes frame 0 alone: I2V conditions on an image's latents."""
    family = _family(tiny_ltx2_dir)
    vae = family.load_vae(torch.float32)
    pixels = torch.rand(1, 3, 9, 64, 96) * 2 - 1
    (clip,) = family.encode_video(vae, pixels)
    (image,) = family.encode_video(vae, pixels[:, :, :1])
    assert clip["latents"].shape == (16, 2, 2, 3)
    torch.testing.assert_close(clip["latents"][:, :1], image["latents"], atol=1e-5, rtol=1e-5)


def test_inputs_prescale_timesteps_and_condition_the_first_frame() -> None:
    family = _family()
    x0, noise = torch.randn(2, 16, 2, 2, 3), torch.randn(2, 16, 2, 2, 3)
    sigmas = torch.tensor([0.25, 0.75])
    text = family.collate_text([{PROJ_KEY: torch.randn(3, 32)}, {PROJ_KEY: torch.randn(5, 32)}])
    first = first_frame_mask(2, 12, 6, 1.0, torch.Generator().manual_seed(0))
    inputs = family.prepare_inputs(
        x0, noise, sigmas, text, 24.0, torch.float32, first_frame=first, audio_channels=32
    )
    kwargs = inputs.kwargs
    assert kwargs["timestep"].shape == (2, 12)
    assert kwargs["timestep"][:, :6].abs().sum() == 0  # first-frame tokens: timestep 0
    torch.testing.assert_close(kwargs["timestep"][:, 6:], torch.tensor([[250.0] * 6, [750.0] * 6]))
    tokens = pack_latents(x0)
    torch.testing.assert_close(kwargs["hidden_states"][:, :6], tokens[:, :6])  # clean
    s = sigmas.view(-1, 1, 1)
    torch.testing.assert_close(
        kwargs["hidden_states"][:, 6:], ((1 - s) * tokens + s * pack_latents(noise))[:, 6:]
    )
    video = inputs.stream("video")
    torch.testing.assert_close(video.target, pack_latents(noise - x0))
    assert video.mask[:, :6].sum() == 0 and video.mask[:, 6:].all()
    assert [s.name for s in inputs.streams] == ["video"]
    assert kwargs["isolate_modalities"] and kwargs["audio_hidden_states"].shape == (2, 1, 32)
    assert kwargs["encoder_hidden_states"].shape == (2, 1024, 32) and not kwargs["use_cross_timestep"]
    # audio: its own sigmas, its own pre-scaled timestep, streams joined
    audio = AudioInputs(
        torch.randn(2, 5, 32), torch.randn(2, 5, 32), torch.tensor([0.1, 0.9]), torch.ones(2, 5)
    )
    joint = family.prepare_inputs(x0, noise, sigmas, text, 24.0, torch.float32, audio=audio)
    assert not joint.kwargs["isolate_modalities"] and joint.kwargs["audio_num_frames"] == 5
    torch.testing.assert_close(joint.kwargs["audio_timestep"], torch.tensor([100.0, 900.0]))
    torch.testing.assert_close(joint.kwargs["timestep"], torch.tensor([250.0, 750.0]))


def test_ltx_2_0_keeps_each_streams_own_cross_attention_timesteps(tiny_ltx2_dir: Path) -> None:
    """LTX-2.0 was trained with each stream's own timesteps for the A/V cross-attention modulation: no hook
    in training or validation, `use_cross_timestep=False` in both."""
    family = _family(tiny_ltx2_dir)
    transformer = family.load_transformer(torch.float32)
    assert not family.ltx2_3 and not has_av_cross_timesteps(transformer)
    family.build_pipeline(transformer, family.load_vae(torch.float32), family.load_scheduler())
    assert not has_av_cross_timesteps(transformer)
    assert family.pipeline_call_kwargs(24.0)["use_cross_timestep"] is False


def test_sigma_sampler_is_the_stretched_shifted_logit_normal() -> None:
    generator = torch.Generator().manual_seed(0)
    mu = 0.95
    plain = stretched_logit_normal(200_000, mu, generator, uniform_prob=0.0)
    low, high = torch.sigmoid(torch.tensor(mu - 2.5758)), torch.sigmoid(torch.tensor(mu + 3.0902))
    median = (torch.sigmoid(torch.tensor(mu)) - low) / (high - low)  # the stretch maps sigmoid(mu) to here
    assert float(plain.median()) == pytest.approx(float(median), abs=0.01)
    assert plain.min() >= 0 and plain.max() <= 1 and (plain < 1e-3).float().mean() < 1e-3  # reflected
    mixed = stretched_logit_normal(200_000, mu, generator)
    plain_far = float((plain > 0.98).float().mean())
    assert float((mixed > 0.98).float().mean()) == pytest.approx(0.9 * plain_far + 0.1 * 0.02, abs=0.003)


def test_loss_is_video_plus_masked_audio_and_ignores_conditioned_tokens() -> None:
    pred, target = torch.zeros(2, 4, 3), torch.ones(2, 4, 3)
    target[:, 0] = 10.0  # a conditioning token with a huge error...
    mask = torch.tensor([[False, True, True, True]] * 2)
    assert masked_mse_per_sample(pred, target, mask).tolist() == [1.0, 1.0]  # ...does not count
    silent = torch.zeros(2, 4, dtype=torch.bool)
    assert masked_mse_per_sample(pred, target, silent).tolist() == [0.0, 0.0]  # no audio: 0, not NaN

    family = _family()
    model = family.load_transformer(torch.float32)
    text = family.collate_text([{PROJ_KEY: torch.randn(4, 32)}] * 2)
    tensors = {
        "latents": torch.randn(2, 16, 2, 2, 3),
        "audio_latents": torch.randn(2, 5, 32),
        "audio_mask": torch.tensor([[1.0] * 5, [0.0] * 5]),
    }
    batch = Batch(tensors=tensors, text=text, frame_rate=24.0, use_std=False)
    loss = training_loss(
        family, model, batch, torch.Generator().manual_seed(1), "shifted_logit_normal", "cpu", torch.float32
    )
    assert torch.isfinite(loss) and loss > 0
    loss.backward()


def test_lora_targets_cover_audio_attention_only_with_audio() -> None:
    family = _family()
    video_only = family.lora_targets()
    assert "attn1.to_q" in video_only and "to_q" not in video_only
    family.audio_options = {"clips": object()}
    assert set(family.lora_targets()) == {"to_k", "to_q", "to_v", "to_out.0"}
    for targets, expect_audio in ((video_only, False), (family.lora_targets(), True)):
        model = family.load_transformer(torch.float32)
        model.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=targets))
        names = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if "lora_A" in n}
        assert "transformer_blocks.0.attn1.to_q" in names and "transformer_blocks.1.attn2.to_out.0" in names
        for audio_module in (
            "audio_attn1.to_q",
            "audio_attn2.to_k",
            "audio_to_video_attn.to_v",
            "video_to_audio_attn.to_q",
        ):
            assert (f"transformer_blocks.0.{audio_module}" in names) is expect_audio


def test_configure_rejects_what_it_cannot_do() -> None:
    from cinetune.errors import ConfigError, NotSupportedYet

    family = _family()
    family.configure(TrainConfig(model_family="ltxvideo2", first_frame_conditioning_p=0.5))
    assert family.first_frame_p == 0.5
    k5 = build_family("kandinsky5-video", "tiny", None)
    with pytest.raises(NotSupportedYet, match="first_frame_conditioning_p"):
        k5.configure(TrainConfig(model_family="kandinsky5-video", first_frame_conditioning_p=0.5))
    with pytest.raises(ConfigError, match="image-to-video"):
        family.configure(TrainConfig(model_family="ltxvideo2", eval_dataset_id="eval"))


def test_original_lora_has_original_names_baked_alpha_and_loads_in_diffusers(
    tmp_path: Path, tiny_ltx2_dir: Path
) -> None:
    family = _family()
    model = family.load_transformer(torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in"])
    model.add_adapter(config)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    save_diffusers_lora(tmp_path, LTX2Pipeline, model, config.to_dict())
    comfy = load_file(str(family.export_comfyui(tmp_path)))
    assert (tmp_path / COMFYUI_FILE).exists() and all(k.startswith("diffusion_model.") for k in comfy)
    assert "diffusion_model.patchify_proj.lora_A.weight" in comfy and not any(
        k.endswith(".alpha") for k in comfy
    )
    assert "diffusion_model.transformer_blocks.0.audio_to_video_attn.to_q.lora_B.weight" in comfy
    a = comfy["diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight"]
    b = comfy["diffusion_model.transformer_blocks.0.attn1.to_q.lora_B.weight"]
    # ltx-core fuses B @ A, ComfyUI (no alpha key) the same: both must give the trained delta alpha / r * B A
    torch.testing.assert_close(b @ a, model.transformer_blocks[0].attn1.to_q.get_delta_weight("default"))

    def generate(pipe: LTX2Pipeline) -> torch.Tensor:
        return pipe(
            "a red square",
            num_frames=9,
            height=64,
            width=64,
            num_inference_steps=2,
            guidance_scale=1.0,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
            max_sequence_length=128,
            **{k: v for k, v in family.pipeline_call_kwargs(24.0).items() if k != "frame_rate"},
        ).frames

    pipe = LTX2Pipeline.from_pretrained(tiny_ltx2_dir)
    pipe.set_progress_bar_config(disable=True)
    base = generate(pipe)
    pipe.load_lora_weights(tmp_path / DIFFUSERS_FILE, adapter_name="diffusers")
    from_diffusers = generate(pipe)
    pipe.unload_lora_weights()
    pipe.load_lora_weights(tmp_path / COMFYUI_FILE, adapter_name="original")
    torch.testing.assert_close(generate(pipe), from_diffusers)
    assert not torch.allclose(base, from_diffusers)


def test_validation_modules_are_the_pipelines_audio_vae_and_vocoder() -> None:
    """What validation moves back to the CPU with offload_during_startup besides the VAE."""
    family = _family()
    assert family.validation_modules() == []
    vae = family.load_vae(torch.float32)
    pipe = family.build_pipeline(family.load_transformer(torch.float32), vae, family.load_scheduler())
    modules = family.validation_modules()
    assert len(modules) == 2
    assert modules[0] is pipe.audio_vae and modules[1] is pipe.vocoder
