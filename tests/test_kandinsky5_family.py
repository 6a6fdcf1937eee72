"""kandinsky5-video on tiny real diffusers/transformers classes: loading, encoding, inputs, LoRA."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import Kandinsky5I2VPipeline, Kandinsky5T2VPipeline
from peft import LoraConfig

from cinetune.cache.store import TensorCache
from cinetune.config import TrainConfig
from cinetune.errors import ConfigError
from cinetune.memory.vae import disable_patch_conv, enable_patch_conv
from cinetune.models.kandinsky5 import tiny
from cinetune.models.kandinsky5.inputs import SHIFT_MU
from cinetune.models.registry import build_family
from cinetune.objectives import flow_loss, sample_sigmas, shift_sigmas
from cinetune.training.batches import Batch
from cinetune.training.step import training_loss

CAPTIONS = ["a red square moves", "", "a blue circle slowly jumps over a green tree at night in the rain"]


@pytest.fixture(scope="module")
def k5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.save_tiny_checkpoint(tmp_path_factory.mktemp("k5") / "Kandinsky5-tiny")


@pytest.fixture(scope="module")
def k5_i2v_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.save_tiny_checkpoint(tmp_path_factory.mktemp("k5i2v") / "Kandinsky5-tiny-i2v", i2v=True)


def _config(**keys) -> TrainConfig:
    return TrainConfig(model_family="kandinsky5-video", **keys)


def test_flavours_map_to_diffusers_repos() -> None:
    family = build_family("kandinsky5_video", None, None)
    assert family.loader.flavour == "t2v-lite-sft-5s"
    assert family.loader.source == "kandinskylab/Kandinsky-5.0-T2V-Lite-sft-5s-Diffusers"
    cls = type(family)
    for name, flavour in cls.flavours.items():
        if name.startswith("tiny"):
            continue
        assert flavour.repo.startswith("kandinskylab/Kandinsky-5.0-") and flavour.repo.endswith("-Diffusers")
        assert flavour.extra["i2v"] == name.startswith("i2v")
    for name in ("t2v-lite-sft-10s", "t2v-pro-pretrain-10s-hd"):
        assert build_family("kandinsky5-video", name, None).frame_rule.spatial_multiple == 128
    assert build_family("kandinsky5-video", "i2v-pro-sft-5s", None).conditions_on_image
    builtin_i2v = build_family("kandinsky5-video", "tiny-i2v", None)
    assert builtin_i2v.conditions_on_image and builtin_i2v.loader.is_builtin_tiny
    offline = build_family("kandinsky5-video", "t2v-pro-sft-5s-hd", None)
    with pytest.raises(
        ConfigError, match=r"could not load transformer from 'kandinskylab/Kandinsky-5\.0-T2V-Pro"
    ):
        offline.load_transformer(torch.float32)
    with pytest.raises(ConfigError, match="no 'vae' folder"):
        build_family("kandinsky5-video", "tiny", str(Path(__file__).parent)).load_vae(torch.float32)


# metrics.scale_factor of the official config each flavour follows (kandinskylab/kandinsky-5 configs/, read at
# commit 6e2a805). The Pro pretrain models have no config of their own: their SFT model's HD config.
OFFICIAL_ROPE_SCALE = {
    "t2v-lite-sft-5s": ("k5_lite_t2v_5s_sft_sd.yaml", (1.0, 2.0, 2.0)),
    "t2v-lite-pretrain-5s": ("k5_lite_t2v_5s_pretrain_sd.yaml", (1.0, 2.0, 2.0)),
    "t2v-lite-sft-10s": ("k5_lite_t2v_10s_sft_sd.yaml", (1.0, 2.0, 2.0)),
    "t2v-lite-pretrain-10s": ("k5_lite_t2v_10s_pretrain_sd.yaml", (1.0, 2.0, 2.0)),
    "t2v-pro-sft-5s-hd": ("k5_pro_t2v_5s_sft_hd.yaml", (1.0, 3.16, 3.16)),
    "t2v-pro-pretrain-5s-hd": ("k5_pro_t2v_5s_sft_hd.yaml", (1.0, 3.16, 3.16)),
    "t2v-pro-sft-10s-hd": ("k5_pro_t2v_10s_sft_hd.yaml", (1.0, 3.16, 3.16)),
    "t2v-pro-pretrain-10s-hd": ("k5_pro_t2v_10s_sft_hd.yaml", (1.0, 3.16, 3.16)),
    "i2v-lite-5s": ("k5_lite_i2v_5s_sft_sd.yaml", (1.0, 2.0, 2.0)),
    "i2v-pro-sft-5s": ("k5_pro_i2v_5s_sft_hd.yaml", (1.0, 3.16, 3.16)),
    "tiny": ("k5_lite_t2v_5s_sft_sd.yaml (tiny Lite)", (1.0, 2.0, 2.0)),
    "tiny-i2v": ("k5_lite_i2v_5s_sft_sd.yaml (tiny Lite)", (1.0, 2.0, 2.0)),
}


def test_rope_scale_factor_is_the_official_configs_per_flavour() -> None:
    cls = type(build_family("kandinsky5-video", "tiny", None))
    assert set(cls.flavours) == set(OFFICIAL_ROPE_SCALE)
    for name, (config, scale) in OFFICIAL_ROPE_SCALE.items():
        assert cls.flavours[name].extra["rope_scale_factor"] == scale, (name, config)
        assert build_family("kandinsky5-video", name, None).rope_scale_factor == scale, name
        # the HD scale is exactly the Pro flavours', all of them NABLA (HD) architectures
        assert (scale == (1.0, 3.16, 3.16)) == ("-pro-" in name)
        assert cls.flavours[name].extra["sparse_attention"] or scale == (1.0, 2.0, 2.0)


def test_frame_rule_adjusts_down_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    rule = build_family("kandinsky5-video", "tiny", None).frame_rule
    assert (rule.frames_down(50), rule.frames_down(121), rule.side_down(500)) == (49, 121, 496)
    with caplog.at_level(logging.WARNING):
        assert rule.adjust_frames(24, "num_frames") == 21
    assert "4k+1" in caplog.text


def test_folder_tokenizers_vae_scale_and_cache_identity(k5_dir: Path) -> None:
    """(That the folder's weights equal the built-in tiny model's is checked for every family in
    tests/families.)"""
    folder, builtin = (
        build_family("kandinsky5-video", "tiny", str(k5_dir)),
        build_family("kandinsky5-video", "tiny", None),
    )
    assert folder.load_transformer(torch.float32).config.visual_cond
    (qwen_tok, clip_tok), _ = folder.load_text_encoder(torch.float32)
    assert qwen_tok("a red cat").input_ids == tiny.tiny_qwen_tokenizer()("a red cat").input_ids
    assert clip_tok("a red cat").input_ids[-1] == clip_tok.eos_token_id
    assert folder.load_vae(torch.float32).config.scaling_factor == pytest.approx(0.476986)
    ids = {folder.component_identity("text"), builtin.component_identity("text")}
    assert len(ids) == 2


def test_text_embeddings_are_the_pipelines_without_the_template_prefix(k5_dir: Path, tmp_path: Path) -> None:
    family = build_family("kandinsky5-video", "tiny", str(k5_dir))
    tokenizers, encoders = family.load_text_encoder(torch.float32)
    ours = family.encode_text(tokenizers, encoders, CAPTIONS, 512)
    pipe = Kandinsky5T2VPipeline.from_pretrained(k5_dir)
    template, start = tiny.prompt_template()
    assert start == 128 and len(tokenizers[0](template.split("{}")[0]).input_ids) == 128
    cache = TensorCache(tmp_path)
    for caption, entry in zip(CAPTIONS, ours, strict=True):
        qwen, clip, cu_seqlens = pipe.encode_prompt(caption, device=torch.device("cpu"), dtype=torch.float32)
        torch.testing.assert_close(entry["prompt_embeds"], qwen[0])
        torch.testing.assert_close(entry["pooled_prompt_embeds"], clip[0])
        ids = tokenizers[0](template.format(caption)).input_ids[start:]
        assert tokenizers[0].decode(ids) == caption + "<|im_end|>"  # exactly the prompt and <|im_end|>
        assert entry["prompt_embeds"].shape == (len(ids), tiny.TINY_QWEN_DIM) == (int(cu_seqlens[-1]), 32)
        cache.save(caption[:8] or "empty", entry)
    # no padding stored: bytes grow with the caption, about 4 bytes x dim per token in fp32 plus the header
    sizes = [cache.size_bytes(c[:8] or "empty") for c in CAPTIONS]
    assert sizes[1] < sizes[0] < sizes[2]
    assert sizes[2] - sizes[0] == (ours[2]["prompt_embeds"].numel() - ours[0]["prompt_embeds"].numel()) * 4
    (short,) = family.encode_text(tokenizers, encoders, [CAPTIONS[2]], 8)
    assert short["prompt_embeds"].shape[0] <= 8


def test_max_sequence_length_over_1024_fails_in_configure_before_any_weights() -> None:
    # a hub flavour with no weights on this machine: configure must reject the config without loading any
    family = build_family("kandinsky5-video", "t2v-lite-sft-5s", None)
    with pytest.raises(ConfigError, match="max_sequence_length 1025: Kandinsky 5 takes at most 1024"):
        family.configure(_config(max_sequence_length=1025))
    assert family.configure(_config(max_sequence_length=1024)) == {}
    assert family.configure(_config()) == {}  # unset: the default 512
    nabla = build_family("kandinsky5-video", "t2v-lite-sft-10s", None)
    assert nabla.configure(_config(max_sequence_length=1024))["attention_backend"] == "flex"
    with pytest.raises(ConfigError, match="at most 1024"):
        nabla.configure(_config(max_sequence_length=4096))


def test_video_latents_scaled_without_mean_std_and_i2v_first_frame(k5_i2v_dir: Path) -> None:
    family = build_family("kandinsky5-video", "tiny-i2v", str(k5_i2v_dir))
    vae = family.load_vae(torch.float32)
    pixels = torch.rand(1, 3, 9, 64, 96) * 2 - 1
    (entry,) = family.encode_video(vae, pixels)
    assert entry["latents"].shape == (16, 3, 8, 12)  # 9 frames -> 3 (4x), 64x96 -> 8x12 (8x)
    posterior = vae.encode(pixels).latent_dist
    torch.testing.assert_close(entry["latents"], posterior.mean[0] * 0.476986)
    torch.testing.assert_close(entry["latents_std"], posterior.std[0] * 0.476986)
    image = vae.encode(pixels[:, :, :1]).latent_dist.mean[0] * 0.476986
    assert entry["image_latents"].shape == (16, 1, 8, 12)
    torch.testing.assert_close(entry["image_latents"], image)
    t2v = build_family("kandinsky5-video", "tiny", str(k5_i2v_dir))
    assert "image_latents" not in t2v.encode_video(vae, pixels)[0]
    assert t2v.component_identity("vae") != family.component_identity("vae")


def test_patch_conv_gives_the_plain_latents_and_tiling_stays_close() -> None:
    vae = tiny.tiny_components()["vae"].eval()
    coarse = torch.rand(1, 3, 9, 8, 12, generator=torch.Generator().manual_seed(0))
    pixels = torch.nn.functional.interpolate(coarse, size=(9, 128, 192), mode="trilinear") * 2 - 1
    with torch.no_grad():
        small = pixels[:, :, :, :64, :96]
        plain = vae.encode(small).latent_dist.mean
        decoded = vae.decode(plain).sample
        assert enable_patch_conv(vae, chunk_bytes=1) == 44  # one output frame per chunk: the hardest case
        torch.testing.assert_close(vae.encode(small).latent_dist.mean, plain, atol=1e-5, rtol=0)
        torch.testing.assert_close(vae.decode(plain).sample, decoded, atol=1e-5, rtol=0)
        disable_patch_conv(vae)
        plain = vae.encode(pixels).latent_dist.mean
        vae.enable_tiling(
            tile_sample_min_height=96,
            tile_sample_min_width=96,
            tile_sample_stride_height=64,
            tile_sample_stride_width=64,
        )
        tiled = vae.encode(pixels).latent_dist.mean
    # Tiles blend at the seams and normalise their own statistics: close, not equal (random weights make
    # this the worst case; trained VAEs are smoother).
    assert not torch.equal(tiled, plain)
    assert (tiled - plain).abs().mean() < 0.5 * plain.std()
    assert torch.corrcoef(torch.stack([tiled.flatten(), plain.flatten()]))[0, 1] > 0.8


def test_eval_dataset_needs_an_image_to_video_flavour(k5_i2v_dir: Path) -> None:
    family = build_family("kandinsky5-video", "tiny", None)
    with pytest.raises(ConfigError, match="generates from text only"):
        family.configure(_config(eval_dataset_id="eval"))
    i2v = build_family("kandinsky5-video", "tiny-i2v", str(k5_i2v_dir))
    i2v.configure(_config(validation_using_datasets=True))


def test_inputs_are_channels_last_with_condition_and_mask() -> None:
    family = build_family("kandinsky5-video", "tiny", None)
    x0, noise = torch.randn(2, 16, 3, 4, 6), torch.randn(2, 16, 3, 4, 6)
    sigmas = torch.tensor([0.25, 0.75])
    text = family.collate_text(
        [{"prompt_embeds": torch.randn(5, 32), "pooled_prompt_embeds": torch.randn(32)}] * 2
    )
    inputs = family.prepare_inputs(x0, noise, sigmas, text, 24.0, torch.float32)
    hidden = inputs.kwargs["hidden_states"]
    assert hidden.shape == (2, 3, 4, 6, 33)
    noisy = (1 - sigmas.view(-1, 1, 1, 1, 1)) * x0 + sigmas.view(-1, 1, 1, 1, 1) * noise
    torch.testing.assert_close(hidden[..., :16], noisy.permute(0, 2, 3, 4, 1))
    assert not hidden[..., 16:].any()  # text-to-video: condition and mask channels are zero
    target = (noise - x0).permute(0, 2, 3, 4, 1).flatten(1, 3)
    torch.testing.assert_close(inputs.stream("video").target, target)
    assert inputs.kwargs["timestep"].tolist() == [250.0, 750.0]
    assert [p.tolist() for p in inputs.kwargs["visual_rope_pos"]] == [[0, 1, 2], [0, 1], [0, 1, 2]]
    assert inputs.kwargs["text_rope_pos"].tolist() == [0, 1, 2, 3, 4]
    assert inputs.stream("video").mask.all()
    image = torch.randn(2, 16, 1, 4, 6)
    inputs = family.prepare_inputs(x0, noise, sigmas, text, 24.0, torch.float32, image_latents=image)
    hidden = inputs.kwargs["hidden_states"]
    torch.testing.assert_close(hidden[:, 0, ..., :16], image[:, :, 0].permute(0, 2, 3, 1))
    torch.testing.assert_close(hidden[:, 1:, ..., :16], noisy[:, :, 1:].permute(0, 2, 3, 4, 1))
    assert not hidden[..., 16:32].any()
    assert hidden[:, 0, ..., 32].eq(1).all() and not hidden[:, 1:, ..., 32].any()
    mask = inputs.stream("video").mask.view(2, 3, 24)
    assert mask[:, 0].sum() == 0 and mask[:, 1:].all()
    assert inputs.kwargs["scale_factor"] == (1.0, 2.0, 2.0)  # the flavour's constant (Lite), not by size
    assert family.shift_mu(family.num_tokens(x0.shape)) == pytest.approx(np.log(5.0))


def test_pipelines_feed_the_transformer_what_training_feeds_it(k5_dir: Path) -> None:
    """Capture the first transformer call of both pipelines and compare with prepare_inputs."""
    calls = []
    family = build_family("kandinsky5-video", "tiny", None)
    for pipeline_class in (Kandinsky5T2VPipeline, Kandinsky5I2VPipeline):
        pipe = family.use_rope_scale_factor(pipeline_class.from_pretrained(k5_dir))
        pipe.set_progress_bar_config(disable=True)
        pipe.transformer.register_forward_pre_hook(lambda _m, _a, kw: calls.append(kw), with_kwargs=True)
        extra = {"image": np.zeros((64, 96, 3), np.uint8)} if pipeline_class is Kandinsky5I2VPipeline else {}
        pipe(
            prompt="a red square",
            height=64,
            width=96,
            num_frames=9,
            num_inference_steps=1,
            guidance_scale=1.0,
            **extra,
        )
    entry = {
        "prompt_embeds": calls[0]["encoder_hidden_states"][0],
        "pooled_prompt_embeds": calls[0]["pooled_projections"][0],
    }
    sigma = calls[0]["timestep"] / 1000
    latents = calls[0]["hidden_states"][..., :16].permute(0, 4, 1, 2, 3)
    ours = family.prepare_inputs(latents, latents, sigma, family.collate_text([entry]), 24.0, torch.float32)
    for key in ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "text_rope_pos"):
        torch.testing.assert_close(ours.kwargs[key], calls[0][key])
    assert ours.kwargs["scale_factor"] == calls[0]["scale_factor"]
    for ours_pos, theirs in zip(ours.kwargs["visual_rope_pos"], calls[0]["visual_rope_pos"], strict=True):
        assert torch.equal(ours_pos, theirs)
    i2v = calls[1][
        "hidden_states"
    ]  # image latent in frame 0 of the noisy channels, mask 1 there, no condition
    assert not i2v[..., 16:32].any() and i2v[:, 0, ..., 32].eq(1).all() and not i2v[:, 1:, ..., 32].any()


class _StopAtCallError(Exception):
    """Raised by a transformer hook once the call's `scale_factor` is recorded: no denoising, no decoding."""


def _scale_factors(pipe, run) -> list[tuple]:
    """`scale_factor` of the first transformer call while `run()` drives `pipe`, then stop."""
    seen = []

    def hook(_module, _args, kwargs):
        seen.append(tuple(kwargs["scale_factor"]))
        raise _StopAtCallError

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with pytest.raises(_StopAtCallError):
            run()
    finally:
        handle.remove()
    return seen


def _validate(family, pipe, width: int, height: int, image: np.ndarray | None = None):
    """What validation does for one prompt and size: `family.generate` from cached-style embeddings."""
    text = {"prompt_embeds": torch.randn(5, 32), "pooled_prompt_embeds": torch.randn(32)}
    return lambda: family.generate(
        pipe,
        text,
        text,
        width=width,
        height=height,
        num_frames=17,
        guidance_scale=1.0,
        num_inference_steps=1,
        frame_rate=24,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
        image=image,
    )


def test_rope_scale_factor_is_the_flavour_constant_in_training_and_validation_at_672x384(
    k5_dir: Path, k5_i2v_dir: Path
) -> None:
    lite, hd = (1.0, 2.0, 2.0), (1.0, 3.16, 3.16)
    # diffusers' pixel rule gives 3.16 to the example's 672x384 (16:9) and 576x432 (4:3) buckets
    for width, height in ((672, 384), (576, 432)):
        assert Kandinsky5T2VPipeline._get_scale_factor(None, height, width) == hd

    # training: the inputs the training step builds for a 672x384 bucket
    family = build_family("kandinsky5-video", "tiny", str(k5_dir))
    entry = {"prompt_embeds": torch.randn(4, 32), "pooled_prompt_embeds": torch.randn(32)}
    batch = Batch(
        tensors={"latents": torch.randn(1, 16, 3, 384 // 8, 672 // 8)},
        text=family.collate_text([entry]),
        frame_rate=24.0,
        use_std=False,
    )
    (forward,) = family.training_inputs(
        batch,
        torch.Generator().manual_seed(0),
        "uniform",
        torch.device("cpu"),
        torch.float32,
        family_config(),
    )
    assert forward.kwargs["scale_factor"] == lite
    assert forward.kwargs["hidden_states"].shape[1:4] == (3, 48, 84)

    # validation, text-to-video: the pipeline build_pipeline returns
    transformer, vae, scheduler = (
        family.load_transformer(torch.float32),
        family.load_vae(torch.float32),
        family.load_scheduler(),
    )
    pipe = family.build_pipeline(transformer, vae, scheduler)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe) is Kandinsky5T2VPipeline and pipe._get_scale_factor(384, 672) == lite
    assert _scale_factors(pipe, _validate(family, pipe, 672, 384)) == [lite]
    # the same pipeline without the override passes the pixel rule's value to the transformer
    plain = Kandinsky5T2VPipeline(**pipe.components)
    plain.set_progress_bar_config(disable=True)
    call = {"height": 384, "width": 672, "num_frames": 9, "num_inference_steps": 1, "guidance_scale": 1.0}
    embeds = {k: v for k, v in family.pipeline_text_kwargs(entry, entry).items() if "negative" not in k}
    assert _scale_factors(plain, lambda: plain(**embeds, **call)) == [hd]

    # validation, image-to-video: without an image, generate first runs a T2V pipeline built from
    # `pipe.components` (its call is checked), then the I2V pipeline; with an image, the I2V pipeline only
    i2v = build_family("kandinsky5-video", "tiny-i2v", str(k5_i2v_dir))
    pipe = i2v.build_pipeline(transformer, vae, scheduler)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe) is Kandinsky5I2VPipeline
    t2v_calls = []
    original = Kandinsky5T2VPipeline.__call__

    def counting(self, **kwargs):
        t2v_calls.append(type(self))
        return original(self, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Kandinsky5T2VPipeline, "__call__", counting)
        assert _scale_factors(pipe, _validate(i2v, pipe, 672, 384)) == [lite]
    assert t2v_calls == [Kandinsky5T2VPipeline]
    image = np.full((384, 672, 3), 128, np.uint8)
    assert _scale_factors(pipe, _validate(i2v, pipe, 672, 384, image)) == [lite]

    # an HD (Pro) flavour keeps its (1, 3.16, 3.16) where the pixel rule says (1, 2, 2): 768x512
    pro = build_family("kandinsky5-video", "t2v-pro-sft-5s-hd", str(k5_dir))
    assert Kandinsky5T2VPipeline._get_scale_factor(None, 512, 768) == lite
    pipe = pro.build_pipeline(transformer, vae, scheduler)
    pipe.set_progress_bar_config(disable=True)
    assert _scale_factors(pipe, _validate(pro, pipe, 768, 512)) == [hd]


def test_uniform_sigma_sampler_applies_the_scheduler_scale_5_shift() -> None:
    """flow_sigma_sampler uniform: sigma = 5 s / (1 + 4 s), s ~ U(0, 1), as Kandinsky's scheduler_scale 5."""
    family = build_family("kandinsky5-video", "tiny", None)
    n = 4000
    entry = {"prompt_embeds": torch.randn(3, 32), "pooled_prompt_embeds": torch.randn(32)}
    latents = torch.zeros(n, 16, 1, 2, 2)
    batch = Batch(
        tensors={"latents": latents}, text=family.collate_text([entry] * n), frame_rate=24.0, use_std=False
    )
    generator = torch.Generator().manual_seed(3)
    replay = torch.Generator().set_state(generator.get_state())
    (forward,) = family.training_inputs(
        batch, generator, "uniform", torch.device("cpu"), torch.float32, family_config()
    )
    sigmas = forward.kwargs["timestep"] / 1000.0
    torch.randn(latents.shape, generator=replay)  # the noise, drawn before the sigmas
    uniform = torch.rand(n, generator=replay)
    torch.testing.assert_close(sigmas, 5 * uniform / (1 + 4 * uniform), atol=1e-5, rtol=0)
    torch.testing.assert_close(sigmas, shift_sigmas(uniform, 5.0), atol=1e-5, rtol=0)
    # the drawn distribution: CDF F(x) = x / (5 - 4x); median F^-1(1/2) = 5/6, a sixth of the draws below 0.5
    assert float(sigmas.median()) == pytest.approx(5 / 6, abs=0.01)
    assert float((sigmas < 0.5).float().mean()) == pytest.approx(1 / 6, abs=0.02)
    ordered = sigmas.sort().values.double()
    empirical = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert float((empirical - ordered / (5 - 4 * ordered)).abs().max()) < 1.36 / n**0.5  # KS, 5 % level
    # the logit-normal sampler keeps its ln 5 centre (median sigmoid(ln 5) = 5/6 too) and is not shifted twice
    (forward,) = family.training_inputs(
        batch,
        torch.Generator().manual_seed(3),
        "shifted_logit_normal",
        torch.device("cpu"),
        torch.float32,
        family_config(),
    )
    assert float((forward.kwargs["timestep"] / 1000).median()) == pytest.approx(5 / 6, abs=0.01)


def family_config() -> SimpleNamespace:
    """The transformer config fields training_inputs reads (regular attention: no sparse params)."""
    return SimpleNamespace(attention_type="regular")


def _lora_model(family, checkpointing: bool = False) -> torch.nn.Module:
    model = family.load_transformer(torch.float32)
    model.requires_grad_(False)
    model.add_adapter(
        LoraConfig(
            r=4, lora_alpha=4, target_modules=list(family.default_lora_targets), init_lora_weights="gaussian"
        )
    )
    if checkpointing:
        model.enable_gradient_checkpointing()
    return model.train()


def test_loss_runs_each_caption_length_unpadded_and_lora_gets_gradients(k5_i2v_dir: Path) -> None:
    family = build_family("kandinsky5-video", "tiny-i2v", str(k5_i2v_dir))
    entries = [
        {"prompt_embeds": torch.randn(n, 32), "pooled_prompt_embeds": torch.randn(32)} for n in (3, 7, 3)
    ]
    latents = torch.randn(3, 16, 3, 4, 6)
    tensors = {"latents": latents, "image_latents": torch.randn(3, 16, 1, 4, 6)}
    batch = Batch(tensors=tensors, text=family.collate_text(entries), frame_rate=24.0, use_std=False)
    losses, grads = [], []
    for checkpointing in (False, True):
        model = _lora_model(family, checkpointing)
        generator = torch.Generator().manual_seed(0)
        replay = torch.Generator().set_state(generator.get_state())
        loss = training_loss(
            family, model, batch, generator, "shifted_logit_normal", torch.device("cpu"), torch.float32
        )
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.abs().sum() for n, p in model.named_parameters() if p.requires_grad})
    noise = torch.randn(latents.shape, generator=replay)
    sigmas = sample_sigmas(3, SHIFT_MU, "shifted_logit_normal", replay)
    with torch.no_grad():  # one sample at a time, real tokens only: what the batched loss must equal
        per_sample = []
        for i, entry in enumerate(entries):
            inputs = family.prepare_inputs(
                latents[i : i + 1],
                noise[i : i + 1],
                sigmas[i : i + 1],
                family.collate_text([entry]),
                24.0,
                torch.float32,
                image_latents=tensors["image_latents"][i : i + 1],
            )
            pred = model(**inputs.kwargs).sample.flatten(1, 3)
            video = inputs.stream("video")
            per_sample.append(flow_loss(pred, video.target, video.mask))
    assert losses[0] == pytest.approx(float(torch.stack(per_sample).mean()), rel=1e-5)
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    for name in (
        "text_transformer_blocks.0.self_attention.to_query",
        "visual_transformer_blocks.1.cross_attention.out_layer",
        "text_transformer_blocks.0.feed_forward.in_layer",
        "visual_transformer_blocks.0.feed_forward.out_layer",
    ):
        assert grads[0][f"{name}.lora_B.default.weight"] > 0, name
    assert not any("modulation" in n or n.startswith("out_layer.") for n in grads[0])


def test_default_lora_targets_are_the_official_recipes_attention_and_feed_forward() -> None:
    """peft resolves the default targets to exactly the attention projections and feed-forward layers."""
    family = build_family("kandinsky5-video", "tiny", None)
    assert family.lora_targets() == [
        "self_attention.to_query",
        "self_attention.to_key",
        "self_attention.to_value",
        "self_attention.out_layer",
        "cross_attention.to_query",
        "cross_attention.to_key",
        "cross_attention.to_value",
        "cross_attention.out_layer",
        "feed_forward.in_layer",
        "feed_forward.out_layer",
    ]
    model = _lora_model(family)
    adapted = {name for name, module in model.named_modules() if hasattr(module, "lora_A")}
    attention = [
        f"{kind}.{proj}"
        for kind in ("self_attention", "cross_attention")
        for proj in ("to_query", "to_key", "to_value", "out_layer")
    ]
    feed_forward = ["feed_forward.in_layer", "feed_forward.out_layer"]
    expected = {f"text_transformer_blocks.0.{m}" for m in attention[:4] + feed_forward} | {
        f"visual_transformer_blocks.{i}.{m}" for i in range(2) for m in attention + feed_forward
    }
    assert adapted == expected  # 6 per text block, 10 per visual block
    linear_out_layers = {
        n for n, m in model.named_modules() if n.endswith("out_layer") and hasattr(m, "weight")
    }
    left = {
        "out_layer.out_layer",
        "out_layer.modulation.out_layer",
        "time_embeddings.out_layer",
        "text_transformer_blocks.0.text_modulation.out_layer",
        "visual_transformer_blocks.0.visual_modulation.out_layer",
        "visual_transformer_blocks.1.visual_modulation.out_layer",
    }
    assert linear_out_layers - adapted == left  # every other `out_layer` stays without an adapter


def test_validation_generates_t2v_and_i2v_from_cached_embeddings(
    k5_i2v_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    family = build_family("kandinsky5-video", "tiny-i2v", str(k5_i2v_dir))
    tokenizers, encoders = family.load_text_encoder(torch.float32)
    positive, negative = family.encode_text(tokenizers, encoders, ["a red square", ""], 512)
    pipe = family.build_pipeline(
        family.load_transformer(torch.float32), family.load_vae(torch.float32), family.load_scheduler()
    )
    assert isinstance(pipe, Kandinsky5I2VPipeline)
    pipe.set_progress_bar_config(disable=True)
    t2v_calls = []
    original = Kandinsky5T2VPipeline.__call__
    monkeypatch.setattr(
        Kandinsky5T2VPipeline, "__call__", lambda self, **kw: t2v_calls.append(1) or original(self, **kw)
    )
    common = {"width": 96, "height": 64, "num_frames": 9, "guidance_scale": 3.0, "num_inference_steps": 2}
    video = family.generate(
        pipe,
        positive,
        negative,
        **common,
        frame_rate=24,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
    )
    assert video.frames.shape == (17, 64, 96, 3) and t2v_calls == [1]  # first frame of a T2V generation
    assert np.isfinite(video.frames).all()
    image = np.full((128, 160, 3), 200, np.uint8)
    video = family.generate(
        pipe,
        positive,
        negative,
        **common,
        frame_rate=24,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
        image=image,
    )
    assert video.frames.shape == (17, 64, 96, 3) and t2v_calls == [1] and np.isfinite(video.frames).all()


def test_nabla_flavours_use_flex_attention_and_reject_other_backends() -> None:
    family = build_family("kandinsky5-video", "t2v-lite-sft-10s", None)
    assert family.frame_rule.spatial_multiple == 128
    cfg = _config(model_flavour="t2v-lite-sft-10s")
    # the plan applies it; cfg stays as written. flex compiled (uncompiled flex attention runs out of memory)
    assert family.configure(cfg) == {"attention_backend": "flex", "compile_transformer_blocks": True}
    assert cfg.attention_backend == "native"
    off = _config(model_flavour="t2v-lite-sft-10s", compile_transformer_blocks=False)
    assert family.configure(off) == {"attention_backend": "flex"}  # the config's false is kept
    with pytest.raises(ConfigError, match="needs attention_backend 'flex'"):
        family.configure(_config(model_flavour="t2v-lite-sft-10s", attention_backend="_native_math"))
    regular = _config()
    assert build_family("kandinsky5-video", "t2v-lite-sft-5s", None).configure(regular) == {}


def test_i2v_rejects_samples_without_frames_after_the_first(tmp_path: Path) -> None:
    from cinetune.config.load import build_data_config

    family = build_family("kandinsky5-video", "tiny-i2v", None)
    images = build_data_config(
        [{"id": "stills", "dataset_type": "image", "instance_data_dir": str(tmp_path)}]
    )
    with pytest.raises(ConfigError, match="at least 5 frames"):
        family.configure_datasets(images)
    clips = build_data_config(
        [
            {
                "id": "clips",
                "dataset_type": "video",
                "instance_data_dir": str(tmp_path),
                "video": {"num_frames": 17},
            }
        ]
    )
    family.configure_datasets(clips)  # long enough: accepted
