"""The ltxvideo family on tiny real diffusers/transformers classes: loading, encoding, inputs, LoRA."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import LTXConditionPipeline, LTXPipeline
from peft import LoraConfig

from cinetune.cache.builder import CacheBuilder
from cinetune.errors import ConfigError, NotSupportedYet
from cinetune.export.lora import save_diffusers_lora
from cinetune.models.ltxvideo.family import LTXVideoFamily, ltx_mu, pack_latents, unpack_latents
from cinetune.models.ltxvideo.tiny import save_tiny_checkpoint
from cinetune.models.registry import build_family

# Captions of different token counts: only </s>, short, medium, and 151 tokens (whole at 256, cut at 128).
_CAPTIONS = ["", "a cat", "a red cat walks in the rain at night", " ".join(["the"] * 150)]


def _family(path: Path | None):
    return build_family("ltxvideo", "tiny", str(path) if path else None)


@pytest.fixture(scope="module")
def tiny_ltx_condition_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model (same weights as `tiny_ltx_dir`) in a 0.9.7-style folder: LTXConditionPipeline, static
    shift scheduler."""
    folder = tmp_path_factory.mktemp("tiny-ltx-condition") / "LTX-Video-0.9.7-tiny"
    return save_tiny_checkpoint(folder, pipeline_class=LTXConditionPipeline)


def _served(flavour: str, tiny_ltx_dir: Path, condition_dir: Path) -> tuple[LTXVideoFamily, Path]:
    """A family of `flavour` on the tiny weights, in the folder layout of its serving pipeline."""
    folder = condition_dir if flavour.startswith("0.9.7") else tiny_ltx_dir
    return build_family("ltxvideo", flavour, str(folder)), folder


def _builder(family: LTXVideoFamily, root: Path, text_batch_size: int = 16, length: int | None = None):
    return CacheBuilder(
        family,
        text_root=root,
        latent_roots={},
        device=torch.device("cpu"),
        dtype=torch.float32,
        max_sequence_length=length or family.default_max_sequence_length,
        text_batch_size=text_batch_size,
    )


def test_loading_errors_say_what_to_fix(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no 'transformer' folder"):
        _family(tmp_path / "empty").load_transformer(torch.float32)
    with pytest.raises(NotSupportedYet, match="single-file"):
        _family(tmp_path / "ltxv.safetensors")
    offline = build_family("ltxvideo", "0.9.5", None)
    assert offline.loader.source == "Lightricks/LTX-Video-0.9.5"
    with pytest.raises(ConfigError, match=r"could not load transformer from 'Lightricks/LTX-Video-0\.9\.5'"):
        offline.load_transformer(torch.float32)


def test_text_embeddings_drop_padding_without_changing_the_model_output(tiny_ltx_dir: Path) -> None:
    """Real-token embeddings + mask give the transformer the same output as the pipeline's padded ones."""
    family = _family(tiny_ltx_dir)
    tokenizer, encoder = family.load_text_encoder(torch.float32)
    (ours,) = family.encode_text(tokenizer, encoder, ["a red cat walks in the rain"], 128)
    pipe = LTXPipeline.from_pretrained(tiny_ltx_dir)
    ref, ref_mask = pipe._get_t5_prompt_embeds(
        "a red cat walks in the rain", max_sequence_length=128, device=torch.device("cpu")
    )
    n = int(ref_mask.sum())
    assert ours["prompt_embeds"].shape == (n, 32)
    torch.testing.assert_close(ours["prompt_embeds"], ref[0, :n])
    text = family.collate_text([ours])
    transformer = family.load_transformer(torch.float32).eval()
    latents = torch.randn(1, 16, 2, 2, 3)
    common = {
        "timestep": torch.tensor([500.0]),
        "num_frames": 2,
        "height": 2,
        "width": 3,
        "rope_interpolation_scale": (8 / 24, 32, 32),
        "return_dict": False,
    }
    with torch.no_grad():
        short = transformer(
            pack_latents(latents),
            text["prompt_embeds"],
            encoder_attention_mask=text["prompt_attention_mask"],
            **common,
        )[0]
        padded = transformer(pack_latents(latents), ref, encoder_attention_mask=ref_mask, **common)[0]
    torch.testing.assert_close(short, padded, atol=1e-5, rtol=1e-4)


def test_video_latents_are_normalized_like_the_pipeline(tiny_ltx_dir: Path) -> None:
    family = _family(tiny_ltx_dir)
    vae = family.load_vae(torch.float32)
    pixels = torch.rand(1, 3, 9, 64, 96) * 2 - 1
    (entry,) = family.encode_video(vae, pixels)
    assert entry["latents"].shape == (16, 2, 2, 3)  # 9 frames -> 2, 64x96 -> 2x3 (8x temporal, 32x spatial)
    posterior = vae.encode(pixels).latent_dist
    expected = LTXPipeline._normalize_latents(posterior.mean, vae.latents_mean, vae.latents_std, 1.0)[0]
    torch.testing.assert_close(entry["latents"], expected)
    back = LTXPipeline._denormalize_latents(entry["latents"][None], vae.latents_mean, vae.latents_std, 1.0)
    torch.testing.assert_close(back[0], posterior.mean[0], atol=1e-5, rtol=1e-5)


def test_pack_order_is_frame_row_col() -> None:
    latents = torch.arange(2 * 3 * 2 * 2 * 3, dtype=torch.float32).reshape(2, 3, 2, 2, 3)
    tokens = pack_latents(latents)
    assert tokens.shape == (2, 12, 3)
    assert torch.equal(tokens[:, 0], latents[:, :, 0, 0, 0])
    assert torch.equal(tokens[:, 1], latents[:, :, 0, 0, 1])
    assert torch.equal(tokens[:, 6], latents[:, :, 1, 0, 0])  # frame 0 = first H*W tokens
    assert torch.equal(unpack_latents(tokens, 2, 2, 3), latents)
    assert torch.equal(LTXPipeline._pack_latents(latents), tokens)


def test_flow_inputs_follow_the_ltx_trainer() -> None:
    family = _family(None)
    x0, noise = torch.randn(2, 16, 2, 2, 3), torch.randn(2, 16, 2, 2, 3)
    sigmas = torch.tensor([0.25, 0.7504])
    text = family.collate_text([{"prompt_embeds": torch.randn(3, 32)}, {"prompt_embeds": torch.randn(5, 32)}])
    inputs = family.prepare_inputs(x0, noise, sigmas, text, 25.0, torch.float32)
    expected_noisy = (1 - sigmas.view(-1, 1, 1, 1, 1)) * x0 + sigmas.view(-1, 1, 1, 1, 1) * noise
    torch.testing.assert_close(inputs.kwargs["hidden_states"], pack_latents(expected_noisy))
    torch.testing.assert_close(inputs.stream("video").target, pack_latents(noise - x0))
    assert inputs.kwargs["timestep"].tolist() == [250.0, 750.0]
    assert inputs.kwargs["rope_interpolation_scale"] == (8 / 25, 32, 32)
    assert inputs.kwargs["encoder_attention_mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]


def test_first_frame_conditioning_follows_ltx_video_trainer() -> None:
    """LTX-Video-Trainer's first-frame conditioning (training_strategies.py): one draw per batch; when drawn,
    latent frame 0 (the first H*W tokens) stays x0 in every sample, its timestep is 0 (the others keep
    round(1000 sigma)), and the loss is mean(L * m) / mean(m) over the other tokens."""
    from cinetune.config import TrainConfig
    from cinetune.objectives import compute_loss
    from cinetune.training.batches import Batch

    family = _family(None)
    family.configure(TrainConfig(model_family="ltxvideo", first_frame_conditioning_p=1.0))
    x0 = torch.randn(2, 16, 3, 2, 3)
    text = family.collate_text([{"prompt_embeds": torch.randn(3, 32)}] * 2)
    batch = Batch(tensors={"latents": x0}, text=text, frame_rate=25.0, use_std=False)
    generator = torch.Generator().manual_seed(0)
    (inputs,) = family.training_inputs(
        batch, generator, "shifted_logit_normal", torch.device("cpu"), torch.float32, None
    )
    # the same draws, replayed: x0 is the mean (no std), then noise, sigmas, the conditioning draw
    replay = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=replay)
    sigmas = torch.sigmoid(torch.randn(2, generator=replay) + ltx_mu(18))
    first = torch.zeros(2, 18, dtype=torch.bool)
    first[:, :6] = True  # frame 0 of a 3 x 2 x 3 latent: 6 tokens
    clean, noisy = (
        pack_latents(x0),
        pack_latents((1 - sigmas.view(-1, 1, 1, 1, 1)) * x0 + sigmas.view(-1, 1, 1, 1, 1) * noise),
    )
    torch.testing.assert_close(inputs.kwargs["hidden_states"], torch.where(first[..., None], clean, noisy))
    expected_t = torch.where(first, 0.0, torch.round(sigmas * 1000).view(-1, 1).expand(2, 18))
    assert torch.equal(inputs.kwargs["timestep"], expected_t)
    assert torch.equal(inputs.stream("video").mask, ~first)
    prediction = torch.randn(2, 18, 16)
    loss = compute_loss([inputs], [(prediction,)]).total
    m = (~first).float().unsqueeze(-1).expand(2, 18, 16)
    reference = ((prediction - (pack_latents(noise) - clean)) ** 2 * m / m.mean()).mean()
    torch.testing.assert_close(loss, reference)
    # one draw per batch: a batch is conditioned whole or not at all, about p of the batches
    family.configure(TrainConfig(model_family="ltxvideo", first_frame_conditioning_p=0.5))
    conditioned = []
    for _ in range(200):
        (inputs,) = family.training_inputs(
            batch, generator, "uniform", torch.device("cpu"), torch.float32, None
        )
        mask = inputs.stream("video").mask
        rows = [False] * 2 if mask is None else [not bool(r.all()) for r in mask]
        assert len(set(rows)) == 1
        conditioned.append(rows[0])
    assert 0.35 < sum(conditioned) / 200 < 0.65


def test_shift_mu_matches_published_values() -> None:
    assert ltx_mu(6144) == pytest.approx(2.7833, abs=1e-3)
    assert ltx_mu(126) == pytest.approx(0.6284, abs=1e-3)
    assert ltx_mu(1024) == pytest.approx(0.95)


@pytest.mark.parametrize(
    ("flavour", "pipeline_class", "length", "t5_mask"),
    [
        ("0.9.0", LTXPipeline, 128, False),
        ("0.9.1", LTXPipeline, 128, False),
        ("0.9.5", LTXPipeline, 128, False),
        ("tiny", LTXPipeline, 128, False),
        ("0.9.7-13b-dev", LTXConditionPipeline, 256, True),
        ("0.9.7-13b-distilled", LTXConditionPipeline, 256, True),
        ("0.9.8-13b-distilled", LTXConditionPipeline, 256, True),
    ],
)
def test_each_flavour_encodes_as_its_serving_pipeline(
    flavour: str, pipeline_class: type, length: int, t5_mask: bool
) -> None:
    family = build_family("ltxvideo", flavour, None)
    assert family.pipeline_class is pipeline_class
    assert family.default_max_sequence_length == length  # what the trainer uses when the config has none
    assert family.t5_attention_mask is t5_mask
    assert family.component_identity("text").endswith(f":t5_mask={t5_mask}")


@pytest.mark.parametrize("flavour", ["0.9.5", "0.9.7-13b-dev"])
@pytest.mark.parametrize("text_batch_size", [1, 3])
def test_cached_text_recollated_equals_the_serving_pipelines_encode_prompt(
    flavour: str, text_batch_size: int, tiny_ltx_dir: Path, tiny_ltx_condition_dir: Path, tmp_path: Path
) -> None:
    """Through the cache (encoded in chunks of `text_batch_size`, stored, loaded, re-collated in batches of 1
    and 4): the real tokens equal the flavour's pipeline's own encode_prompt at its own default length."""
    family, folder = _served(flavour, tiny_ltx_dir, tiny_ltx_condition_dir)
    builder = _builder(family, tmp_path / "text", text_batch_size)
    builder.build_text(_CAPTIONS)
    pipe = family.pipeline_class.from_pretrained(folder)  # its own T5 and tokenizer, from the folder
    for batch in ([_CAPTIONS[2]], _CAPTIONS):
        text = family.collate_text([builder.index.text_embeds(c) for c in batch])
        ref, ref_mask, _, _ = pipe.encode_prompt(
            batch, do_classifier_free_guidance=False, device=torch.device("cpu")
        )
        assert ref.shape[1] == family.default_max_sequence_length
        embeds, mask = text["prompt_embeds"], text["prompt_attention_mask"]
        length = embeds.shape[1]
        assert torch.equal(mask, ref_mask[:, :length]) and not ref_mask[:, length:].any()
        torch.testing.assert_close(embeds[mask], ref[:, :length][mask])
        assert not embeds[~mask].any()  # collate pads with zeros, which the transformer masks out
    # The 151-token caption: whole at 256, cut to 128 (127 words + </s>) by LTXPipeline.
    assert builder.index.text_embeds(_CAPTIONS[3])["prompt_embeds"].shape[0] == min(151, len(ref[0]))


def test_the_t5_mask_changes_the_embeddings_so_the_match_can_fail(tiny_ltx_condition_dir: Path) -> None:
    """On the tiny T5, encoding without the mask (LTXPipeline's way) moves the real tokens far from the masked
    encoding (LTXConditionPipeline's): the equality test above would fail for the wrong flavour."""
    served = build_family("ltxvideo", "0.9.7-13b-dev", str(tiny_ltx_condition_dir))
    unmasked = build_family("ltxvideo", "0.9.5", str(tiny_ltx_condition_dir))
    tokenizer, encoder = served.load_text_encoder(torch.float32)
    caption = [_CAPTIONS[2]]
    (new,) = served.encode_text(tokenizer, encoder, caption, 256)
    (old,) = unmasked.encode_text(tokenizer, encoder, caption, 128)
    assert new["prompt_embeds"].shape == old["prompt_embeds"].shape == (10, 32)
    difference = (new["prompt_embeds"] - old["prompt_embeds"]).abs().max().item()
    assert difference > 0.5  # measured 3.04; T5's final RMS norm keeps values about 1-3
    pipe = LTXConditionPipeline.from_pretrained(tiny_ltx_condition_dir)
    ref = pipe.encode_prompt(caption, do_classifier_free_guidance=False, device=torch.device("cpu"))[0]
    assert not torch.allclose(old["prompt_embeds"], ref[0, :10], atol=0.1)
    # With the mask T5 ignores the pads, so the length does not matter; without it, it does.
    (masked_128,) = served.encode_text(tokenizer, encoder, caption, 128)
    torch.testing.assert_close(masked_128["prompt_embeds"], new["prompt_embeds"])
    (unmasked_256,) = unmasked.encode_text(tokenizer, encoder, caption, 256)
    assert not torch.allclose(unmasked_256["prompt_embeds"], old["prompt_embeds"], atol=0.1)


def test_text_cache_key_changes_with_the_t5_mask(tiny_ltx_condition_dir: Path, tmp_path: Path) -> None:
    """Same weights, same caption, same length: entries encoded with and without the mask never mix."""
    source = str(tiny_ltx_condition_dir)
    masked = _builder(build_family("ltxvideo", "0.9.7-13b-dev", source), tmp_path, length=256)
    also_masked = _builder(build_family("ltxvideo", "0.9.8-13b-distilled", source), tmp_path, length=256)
    unmasked = _builder(build_family("ltxvideo", "0.9.5", source), tmp_path, length=256)
    assert masked.text_key("a cat") == also_masked.text_key("a cat")
    assert masked.text_key("a cat") != unmasked.text_key("a cat")


@pytest.mark.parametrize("flavour", ["tiny", "0.9.7-13b-dev"])
def test_validation_generates_with_the_serving_pipeline_from_cached_embeddings(
    flavour: str, tiny_ltx_dir: Path, tiny_ltx_condition_dir: Path
) -> None:
    """The family's validation pipeline, fed cached embeddings, makes the video the serving pipeline makes
    from the prompt text itself (same seed, 2 steps, CFG on)."""
    family, folder = _served(flavour, tiny_ltx_dir, tiny_ltx_condition_dir)
    tokenizer, encoder = family.load_text_encoder(torch.float32)
    positive, negative = family.encode_text(
        tokenizer, encoder, ["a red cat walks", ""], family.default_max_sequence_length
    )
    transformer = family.load_transformer(torch.float32).eval()
    vae = family.load_vae(torch.float32).eval()
    pipe = family.build_pipeline(transformer, vae, family.load_scheduler())
    assert type(pipe) is family.pipeline_class
    pipe.set_progress_bar_config(disable=True)
    size = {"width": 64, "height": 64, "num_frames": 9, "guidance_scale": 3.0, "num_inference_steps": 2}
    video = family.generate(
        pipe,
        positive,
        negative,
        **size,
        frame_rate=24.0,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
    )
    assert video.frames.shape == (9, 64, 64, 3) and np.isfinite(video.frames).all()
    reference = family.pipeline_class.from_pretrained(folder)
    reference.set_progress_bar_config(disable=True)
    expected = reference(
        prompt="a red cat walks",
        negative_prompt="",
        **size,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **family.pipeline_call_kwargs(24.0),
    ).frames[0]
    np.testing.assert_allclose(video.frames, expected, atol=1e-4)


@pytest.mark.parametrize("flavour", ["tiny", "0.9.7-13b-dev"])
def test_image_to_video_validation_uses_the_flavours_i2v_pipeline(
    flavour: str, tiny_ltx_dir: Path, tiny_ltx_condition_dir: Path
) -> None:
    """With validation_using_datasets, validation conditions on an image: LTXImageToVideoPipeline for the
    flavours LTXPipeline serves, LTXConditionPipeline(image=...) for 0.9.7 / 0.9.8; the video equals what
    that diffusers pipeline makes from the prompt and the (bucket-sized) image."""
    from PIL import Image

    from cinetune.config import TrainConfig

    family, folder = _served(flavour, tiny_ltx_dir, tiny_ltx_condition_dir)
    family.configure(TrainConfig(model_family="ltxvideo", validation_using_datasets=True))
    assert family.conditions_on_image
    tokenizer, encoder = family.load_text_encoder(torch.float32)
    positive, negative = family.encode_text(
        tokenizer, encoder, ["a red cat walks", ""], family.default_max_sequence_length
    )
    pipe = family.build_pipeline(
        family.load_transformer(torch.float32).eval(),
        family.load_vae(torch.float32).eval(),
        family.load_scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    size = {"width": 64, "height": 64, "num_frames": 9, "guidance_scale": 3.0, "num_inference_steps": 2}
    conditioned = family.generate(
        pipe,
        positive,
        negative,
        **size,
        frame_rate=24.0,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
        image=image,
    )
    plain = family.generate(
        pipe,
        positive,
        negative,
        **size,
        frame_rate=24.0,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
    )
    assert not np.allclose(conditioned.frames, plain.frames)
    from diffusers import LTXImageToVideoPipeline

    reference_class = LTXImageToVideoPipeline if flavour == "tiny" else LTXConditionPipeline
    reference = reference_class.from_pretrained(folder)
    reference.set_progress_bar_config(disable=True)
    expected = reference(
        image=Image.fromarray(image),
        prompt="a red cat walks",
        negative_prompt="",
        **size,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **family.pipeline_call_kwargs(24.0),
    ).frames[0]
    np.testing.assert_allclose(conditioned.frames, expected, atol=1e-4)


def test_ltx_condition_flavour_refuses_a_dynamic_shift_scheduler(tiny_ltx_dir: Path) -> None:
    family = build_family("ltxvideo", "0.9.7-13b-dev", str(tiny_ltx_dir))  # LTXPipeline-style scheduler
    with pytest.raises(ConfigError, match="dynamic-shift scheduler"):
        family.load_scheduler()


def test_lora_saved_by_a_0_9_7_family_loads_into_both_pipelines(
    tiny_ltx_dir: Path, tiny_ltx_condition_dir: Path, tmp_path: Path
) -> None:
    family = build_family("ltxvideo", "0.9.7-13b-dev", str(tiny_ltx_condition_dir))
    model = family.load_transformer(torch.float32).eval()
    config = LoraConfig(r=4, lora_alpha=4, target_modules=list(family.default_lora_targets))
    model.add_adapter(config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # as if trained
    path = save_diffusers_lora(tmp_path, family.pipeline_class, model, config.to_dict())
    torch.manual_seed(2)
    inputs = family.prepare_inputs(
        torch.randn(1, 16, 2, 2, 3),
        torch.randn(1, 16, 2, 2, 3),
        torch.tensor([0.5]),
        family.collate_text([{"prompt_embeds": torch.randn(4, 32)}]),
        25.0,
        torch.float32,
    ).kwargs
    with torch.no_grad():
        trained = model(**inputs)[0]
    for pipeline_class, folder in (
        (LTXPipeline, tiny_ltx_dir),
        (LTXConditionPipeline, tiny_ltx_condition_dir),
    ):
        pipe = pipeline_class.from_pretrained(folder)
        with torch.no_grad():
            base = pipe.transformer(**inputs)[0]
            pipe.load_lora_weights(path)
            loaded = pipe.transformer(**inputs)[0]
        assert not torch.allclose(base, trained, atol=1e-4)
        torch.testing.assert_close(loaded, trained, atol=1e-5, rtol=1e-4)


def test_a_text_length_other_than_the_serving_pipelines_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    family = build_family("ltxvideo", "0.9.7-13b-dev", None)
    for length in (None, 256):
        caplog.clear()
        family.configure(SimpleNamespace(max_sequence_length=length))
        assert "max_sequence_length" not in caplog.text
    family.configure(SimpleNamespace(max_sequence_length=128))
    assert "LTXConditionPipeline encodes prompts for flavour 0.9.7-13b-dev at 256 tokens" in caplog.text


def test_i2v_run_validates_on_the_eval_datasets_images(
    tmp_path: Path, clips_dir: Path, make_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `cinetune train` run with first-frame conditioning validates image-to-video on the eval dataset's
    images (not trained on), through the family's I2V pipeline."""
    from PIL import Image

    from cinetune.cli import main

    images = tmp_path / "eval"
    images.mkdir()
    Image.fromarray(np.full((64, 96, 3), 200, np.uint8)).save(images / "still.png")
    eval_entry = {"id": "eval", "dataset_type": "image", "instance_data_dir": str(images), "resolution": 64}
    path = make_config(
        tmp_path,
        clips_dir,
        None,
        max_train_steps=2,
        first_frame_conditioning_p=1.0,
        validation_prompt="a square",
        validation_resolution="64x64",
        validation_num_video_frames=9,
        validation_num_inference_steps=2,
        validation_using_datasets=True,
        eval_dataset_id="eval",
    )
    datasets = json.loads((tmp_path / "config" / "multidatabackend.json").read_text())
    (tmp_path / "config" / "multidatabackend.json").write_text(json.dumps([*datasets, eval_entry]))
    seen: list[Any] = []
    real = LTXVideoFamily.generate

    def record(self, pipe, positive, negative, **kwargs):
        seen.append(kwargs.get("image"))
        return real(self, pipe, positive, negative, **kwargs)

    monkeypatch.setattr(LTXVideoFamily, "generate", record)
    assert main(["train", "--config", str(path)]) == 0
    image, *_ = seen
    assert image is not None and image.shape == (64, 96, 3) and int(image[0, 0, 0]) == 200
    assert (tmp_path / "output" / "validation" / "step_2" / "validation_64x64.mp4").is_file()
