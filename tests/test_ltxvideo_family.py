"""The ltxvideo family on tiny real diffusers/transformers classes: loading, encoding, inputs, LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import LTXPipeline
from peft import LoraConfig

from cinetune.errors import ConfigError, NotSupportedYet
from cinetune.models.ltxvideo.family import ltx_mu, pack_latents, unpack_latents
from cinetune.models.registry import build_family


def _family(path: Path | None):
    return build_family("ltxvideo", "tiny", str(path) if path else None)


def test_loads_from_diffusers_folder_same_as_builtin(tiny_ltx_dir: Path) -> None:
    folder, builtin = _family(tiny_ltx_dir), _family(None)
    a, b = folder.load_transformer(torch.float32), builtin.load_transformer(torch.float32)
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    vae = folder.load_vae(torch.float32)
    assert not torch.allclose(vae.latents_std, torch.ones_like(vae.latents_std))
    tokenizer, encoder = folder.load_text_encoder(torch.float32)
    assert tokenizer("a red cat").input_ids[-1] == tokenizer.eos_token_id
    assert encoder.config.d_model == 32


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


def test_shift_mu_matches_published_values() -> None:
    assert ltx_mu(6144) == pytest.approx(2.7833, abs=1e-3)
    assert ltx_mu(126) == pytest.approx(0.6284, abs=1e-3)
    assert ltx_mu(1024) == pytest.approx(0.95)


def test_lora_on_attention_and_gradient_checkpointing_same_loss() -> None:
    family = _family(None)
    losses, grads = [], []
    for checkpointing in (False, True):
        model = family.load_transformer(torch.float32)
        model.requires_grad_(False)
        torch.manual_seed(0)  # the same LoRA init in both runs
        model.add_adapter(
            LoraConfig(
                r=4,
                lora_alpha=4,
                target_modules=list(family.default_lora_targets),
                init_lora_weights="gaussian",
            )
        )
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert any("attn1.to_q.lora_A" in n for n in names) and any(
            "attn2.to_out.0.lora_B" in n for n in names
        )
        assert all("lora_" in n for n in names)
        if checkpointing:
            model.enable_gradient_checkpointing()
        model.train()
        torch.manual_seed(0)
        x0, noise = torch.randn(1, 16, 2, 2, 3), torch.randn(1, 16, 2, 2, 3)
        text = family.collate_text([{"prompt_embeds": torch.randn(4, 32)}])
        inputs = family.prepare_inputs(x0, noise, torch.tensor([0.5]), text, 24.0, torch.float32)
        loss = torch.nn.functional.mse_loss(model(**inputs.kwargs)[0], inputs.stream("video").target)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].abs().sum() > 0
