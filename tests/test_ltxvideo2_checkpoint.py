"""The LTX-2 combined checkpoint: original key names -> diffusers classes, read lazily, checked against
ltx-core.

ltx-core (Lightricks' reference implementation, `pip install --no-deps ltx-core==1.0.0 einops scipy`) builds
the
original transformer, video VAE and text connectors; their state dicts, written as one file with the release's
key prefixes and config metadata, must load through our converter into diffusers classes that compute the
same.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
from diffusers.pipelines.ltx2 import LTX2TextConnectors
from safetensors import safe_open
from safetensors.torch import save_file

from cinetune.config import TrainConfig
from cinetune.errors import ConfigError
from cinetune.models.base import Flavour
from cinetune.models.ltxvideo2 import checkpoint, tiny
from cinetune.models.ltxvideo2.checkpoint import LTX2Loader, load_component
from cinetune.models.ltxvideo2.convert import convert_state_dict, to_original_state_dict
from cinetune.models.ltxvideo2.family import LTX2Family
from cinetune.models.registry import build_family
from ltx_core_layout import combined_tensors

_TINY = Flavour("tiny", None, "tiny")
_PARTS = {
    "transformer": LTX2VideoTransformer3DModel,
    "connectors": LTX2TextConnectors,
    "vae": AutoencoderKLLTX2Video,
}


@pytest.fixture(scope="module")
def combined(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.save_tiny_combined_file(tmp_path_factory.mktemp("ltx2-file") / "ltx-2-19b-dev.safetensors")


def test_file_folder_and_custom_name_load_the_same_weights(combined: Path, tmp_path: Path) -> None:
    reference = tiny.tiny_components()
    renamed = tmp_path / "my-ltx2.safetensors"
    renamed.symlink_to(combined)
    for source, filename in (
        (str(combined), None),
        (str(combined.parent), None),
        (str(tmp_path), renamed.name),
    ):
        loader = LTX2Loader(source, _TINY, filename)
        for part in ("transformer", "vae", "audio_vae", "vocoder", "connectors"):
            cls = type(reference[part])
            model = loader.load(cls, part, torch_dtype=torch.float32)
            ours, theirs = model.state_dict(), reference[part].state_dict()
            assert ours.keys() == theirs.keys(), part
            assert all(torch.equal(ours[k], theirs[k]) for k in ours), (source, part)


def test_components_are_read_lazily_by_prefix(combined: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the VAE reads only `vae.` tensors: never the transformer's or the others'."""
    read: list[str] = []
    real = checkpoint.safe_open

    class Recording:
        def __init__(self, *args, **kwargs) -> None:
            self.handle = real(*args, **kwargs)

        def __enter__(self):
            inner = self.handle.__enter__()
            original = inner.get_tensor

            class Proxy:
                def __getattr__(self, name):
                    return getattr(inner, name)

                def get_tensor(self, key):
                    read.append(key)
                    return original(key)

            return Proxy()

        def __exit__(self, *exc) -> None:
            self.handle.__exit__(*exc)

    monkeypatch.setattr(checkpoint, "safe_open", Recording)
    vae = load_component(combined, "vae", AutoencoderKLLTX2Video, torch.bfloat16)
    assert read and all(k.startswith("vae.") for k in read)
    assert vae.dtype == torch.bfloat16
    with safe_open(str(combined), framework="pt") as handle:
        assert len(read) < len(list(handle.keys())) / 3


def test_loading_errors_say_what_to_fix(tmp_path: Path, combined: Path) -> None:
    with pytest.raises(ConfigError, match="checkpoint file not found"):
        build_family("ltxvideo2", "2.0", str(tmp_path / "missing.safetensors")).load_vae(torch.float32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="ltx2_checkpoint_filename"):
        build_family("ltxvideo2", "2.0", str(tmp_path / "empty")).load_vae(torch.float32)
    ltx23 = build_family("ltxvideo2", "2.3", None)  # a hub id with a dot in its name, and its own file
    assert ltx23.loader.mode == "hub" and ltx23.loader.filename == "ltx-2.3-22b-dev.safetensors"
    hub = build_family("ltxvideo2", "2.0", None)
    assert hub.loader.mode == "hub" and hub.loader.filename == "ltx-2-19b-dev.safetensors"
    with pytest.raises(
        ConfigError, match=r"could not get ltx-2-19b-dev\.safetensors from 'Lightricks/LTX-2'"
    ):
        hub.load_transformer(torch.float32)
    # weights that do not fit the metadata's architecture: named, not a stack trace from load_state_dict
    with safe_open(str(combined), framework="pt") as handle:
        meta = json.loads(handle.metadata()["config"])
        keys = {k: handle.get_tensor(k) for k in handle.keys() if k.startswith("model.diffusion_model.")}
    meta["transformer"]["cross_attention_adaln"] = True  # an LTX-2.3 config over LTX-2.0 weights
    broken = tmp_path / "broken.safetensors"
    save_file(keys, str(broken), metadata={"config": json.dumps(meta)})
    with pytest.raises(ConfigError, match="do not match"):
        load_component(broken, "transformer", LTX2VideoTransformer3DModel)


def test_key_conversion_round_trips() -> None:
    for part, module in tiny.tiny_components().items():
        if part not in ("transformer", "connectors", "vae", "audio_vae", "vocoder"):
            continue
        state = module.state_dict()
        original = to_original_state_dict(state, part)
        assert convert_state_dict(original, part).keys() == state.keys(), part
    names = set(to_original_state_dict(tiny.tiny_components()["transformer"].state_dict(), "transformer"))
    assert "model.diffusion_model.patchify_proj.weight" in names
    assert "model.diffusion_model.av_ca_a2v_gate_adaln_single.emb.timestep_embedder.linear_1.weight" in names
    assert "model.diffusion_model.transformer_blocks.0.attn1.q_norm.weight" in names


def test_family_loads_from_the_combined_file(combined: Path) -> None:
    family = build_family("ltxvideo2", "2.0", str(combined))
    assert isinstance(family, LTX2Family) and family.loader.mode == "file"
    tokenizer, encoder = family.load_text_encoder(torch.float32)  # Gemma from text_encoder/ beside the file
    assert tokenizer("a red cat").input_ids[0] == tokenizer.bos_token_id
    assert encoder.caption_channels == tiny.TEXT_DIM
    # a folder holding the file under another name: ltx2_checkpoint_filename from the train config picks it
    folder = combined.parent.parent / "renamed"
    folder.mkdir()
    (folder / "ltx-2-19b-distilled.safetensors").symlink_to(combined)
    family = build_family("ltxvideo2", "2.0", str(folder))
    family.configure(
        TrainConfig(model_family="ltxvideo2", ltx2_checkpoint_filename="ltx-2-19b-distilled.safetensors")
    )
    assert family.load_transformer(torch.float32).config.num_layers == 2


# ---- independent reference: ltx-core ----------------------------------------------------------------------
def _randomized(module: torch.nn.Module, scale: float = 0.2) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn_like(param) * scale)
    return module


def _ltx_core_file(tmp_path: Path) -> tuple[Path, dict]:
    """Original transformer, video VAE and connectors from ltx-core, as one file in the release's layout."""
    pytest.importorskip("ltx_core", reason="ltx-core not installed (pip install --no-deps ltx-core==1.0.0)")
    from ltx_core.model.transformer.model_configurator import LTXModelConfigurator
    from ltx_core.model.video_vae.model_configurator import VideoDecoderConfigurator, VideoEncoderConfigurator
    from ltx_core.text_encoders.gemma.embeddings_connector import (
        AudioEmbeddings1DConnectorConfigurator,
        Embeddings1DConnectorConfigurator,
    )

    meta = tiny.TINY_META
    models = {
        "dit": _randomized(LTXModelConfigurator.from_config(meta).to_empty(device="cpu")),
        "encoder": _randomized(VideoEncoderConfigurator.from_config(meta), 0.1),
        "decoder": _randomized(VideoDecoderConfigurator.from_config(meta), 0.1),
        "video_connector": _randomized(Embeddings1DConnectorConfigurator.from_config(meta).float(), 0.3),
        "audio_connector": _randomized(AudioEmbeddings1DConnectorConfigurator.from_config(meta).float(), 0.3),
        "aggregate": _randomized(
            torch.nn.Linear(tiny.TEXT_DIM * (tiny.TEXT_LAYERS + 1), tiny.TEXT_DIM, bias=False)
        ),
    }
    tensors = combined_tensors(models)
    tensors["text_embedding_projection.aggregate_embed.weight"] = models["aggregate"].weight
    path = tmp_path / "ltx-core.safetensors"
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"config": json.dumps(meta)}
    )
    return path, models


def test_ltx_core_checkpoint_gives_the_same_outputs_in_diffusers(tmp_path: Path) -> None:
    path, ref = _ltx_core_file(tmp_path)
    from ltx_core.components.patchifiers import AudioPatchifier, VideoLatentPatchifier, get_pixel_coords
    from ltx_core.guidance.perturbations import BatchedPerturbationConfig
    from ltx_core.model.transformer.modality import Modality
    from ltx_core.types import AudioLatentShape, SpatioTemporalScaleFactors, VideoLatentShape

    model = load_component(path, "transformer", LTX2VideoTransformer3DModel)
    frames, height, width, steps = 2, 2, 3, 5
    bounds = VideoLatentPatchifier(patch_size=1).get_patch_grid_bounds(
        VideoLatentShape(frames=frames, height=height, width=width, batch=1, channels=16)
    )
    positions = get_pixel_coords(bounds, SpatioTemporalScaleFactors.default(), causal_fix=True).float()
    positions[:, 0] = positions[:, 0] / 24.0
    audio_positions = AudioPatchifier(patch_size=1).get_patch_grid_bounds(
        AudioLatentShape(frames=steps, mel_bins=16, batch=1, channels=2)
    )
    # the positions diffusers computes from (frames, height, width, fps) are the trainer's
    torch.testing.assert_close(
        model.rope.prepare_video_coords(1, frames, height, width, "cpu", fps=24.0), positions
    )
    x, a = torch.randn(1, frames * height * width, 16), torch.randn(1, steps, 32)
    context, mask, sigma = torch.randn(1, 7, 32), torch.ones(1, 7, dtype=torch.long), torch.tensor([0.6])
    with torch.no_grad():
        expected = ref["dit"](
            Modality(
                latent=x,
                sigma=sigma,
                timesteps=sigma.expand(1, x.shape[1]),
                positions=positions,
                context=context,
                context_mask=mask,
            ),
            Modality(
                latent=a,
                sigma=sigma,
                timesteps=sigma.expand(1, steps),
                positions=audio_positions,
                context=context,
                context_mask=mask,
            ),
            BatchedPerturbationConfig.empty(1),
        )
        ours = model(
            hidden_states=x,
            audio_hidden_states=a,
            encoder_hidden_states=context,
            audio_encoder_hidden_states=context,
            timestep=sigma * 1000,
            audio_timestep=sigma * 1000,
            encoder_attention_mask=mask,
            audio_encoder_attention_mask=mask,
            num_frames=frames,
            height=height,
            width=width,
            fps=24.0,
            audio_num_frames=steps,
            return_dict=False,
        )
    torch.testing.assert_close(ours[0], expected[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours[1], expected[1], atol=1e-4, rtol=1e-4)


def test_ltx_core_video_vae_and_connectors_match(tmp_path: Path) -> None:
    path, ref = _ltx_core_file(tmp_path)
    from ltx_core.text_encoders.gemma.embeddings_processor import convert_to_additive_mask

    family = build_family("ltxvideo2", "tiny", None)
    vae = load_component(path, "vae", AutoencoderKLLTX2Video)
    pixels = torch.rand(1, 3, 9, 64, 96) * 2 - 1
    with torch.no_grad():
        (entry,) = family.encode_video(vae, pixels)
        torch.testing.assert_close(entry["latents"], ref["encoder"](pixels)[0])
        z = torch.randn(1, 16, 2, 2, 3)
        denormalized = z * vae.latents_std.view(1, -1, 1, 1, 1) + vae.latents_mean.view(1, -1, 1, 1, 1)
        torch.testing.assert_close(vae.decode(denormalized).sample, ref["decoder"](z))

    connectors = load_component(path, "connectors", LTX2TextConnectors)
    from cinetune.models.ltxvideo2.text import PROJ_KEY, collate_prompts, run_connectors

    length, real = 256, 9
    projected = torch.randn(1, real, tiny.TEXT_DIM)
    mask = torch.zeros(1, length, dtype=torch.long)
    mask[:, length - real :] = 1
    padded = torch.zeros(1, length, tiny.TEXT_DIM)
    padded[:, length - real :] = projected
    with torch.no_grad():
        video, audio, out_mask = run_connectors(
            connectors, collate_prompts([{PROJ_KEY: projected[0]}], length)
        )
        additive = convert_to_additive_mask(mask, torch.float32)
        ref_video, _ = ref["video_connector"](padded, additive)
        ref_audio, _ = ref["audio_connector"](padded, additive)
    torch.testing.assert_close(video, ref_video, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(audio, ref_audio, atol=1e-5, rtol=1e-5)
    assert out_mask.sum() == length  # registers fill every padded position


def test_header_defaults_follow_ltx_core(combined: Path) -> None:
    """Keys missing from the header: RoPE 'split' (ltx-core, the 19B header) and a LeakyReLU vocoder for
    resblock '1' (ltx-core reads `activation` only for AMP1)."""
    from cinetune.models.ltxvideo2 import configs
    from cinetune.models.ltxvideo2.convert import component_keys, diffusers_key_map

    def shapes(component: str) -> dict:
        with safe_open(str(combined), framework="pt") as handle:
            mapping = diffusers_key_map(component_keys(list(handle.keys()), component), component)
            return {new: tuple(handle.get_slice(old).get_shape()) for old, new in mapping.items()}

    transformer, vocoder = shapes("transformer"), shapes("vocoder")
    assert configs.transformer_config(None, transformer)["rope_type"] == "split"
    assert configs.transformer_config({"transformer": {}}, transformer)["rope_type"] == "split"
    assert configs.vocoder_config({"vocoder": {"resblock": "1"}}, vocoder)["act_fn"] == "leaky_relu"
    assert configs.vocoder_config({"vocoder": {}}, vocoder)["act_fn"] == "leaky_relu"
    amp = configs.vocoder_config({"vocoder": {"resblock": "AMP1", "activation": "snake"}}, vocoder)
    assert amp["act_fn"] == "snake"
