"""LTX-2.3 in the ltxvideo2 family: the 22B combined checkpoint's layout, checked against ltx-core, and the
tiny 2.3 model through loading, text caching, training, validation and export.

ltx-core (Lightricks' reference implementation, `pip install --no-deps ltx-core==1.0.0 einops scipy`) builds
the original 2.3 transformer (gated attention, prompt AdaLN), text feature extractor (per-token RMS norm, one
projection per stream) and gated connectors, video VAE (the 22B decoder's block order) and BigVGAN-v2 vocoder
with bandwidth extension; their state dicts, written with the release's key prefixes and header, must load
through our converter into diffusers classes that compute the same.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest
import torch
from diffusers import AutoencoderKLLTX2Video, LTX2Pipeline, LTX2VideoTransformer3DModel
from diffusers.pipelines.ltx2 import LTX2TextConnectors
from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder, LTX2VocoderWithBWE
from peft import LoraConfig
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cinetune.export.lora import COMFYUI_FILE, DIFFUSERS_FILE, save_diffusers_lora
from cinetune.models.ltxvideo2 import configs, tiny
from cinetune.models.ltxvideo2.av_timesteps import (
    ADALN_MODULES,
    HOOK_NAME,
    apply_av_cross_timesteps,
    has_av_cross_timesteps,
    remove_av_cross_timesteps,
)
from cinetune.models.ltxvideo2.checkpoint import load_component
from cinetune.models.ltxvideo2.convert import to_original_state_dict
from cinetune.models.ltxvideo2.family import AudioInputs, LTX2Family
from cinetune.models.ltxvideo2.flow import first_frame_mask
from cinetune.models.ltxvideo2.text import PROJ_KEY, make_prompt_encoder, run_connectors
from cinetune.models.registry import build_family
from cinetune.training.batches import Batch
from cinetune.training.speed import apply_gradient_checkpointing
from cinetune.training.step import training_loss
from ltx_core_layout import combined_tensors

META = tiny.TINY_META_2_3
FILE_NAME = "ltx-2.3-22b-dev.safetensors"


@pytest.fixture(scope="module")
def combined(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.save_tiny_combined_file(tmp_path_factory.mktemp("ltx23-file") / FILE_NAME, version="2.3")


def _family(flavour: str = "tiny-2.3", source: Path | None = None) -> LTX2Family:
    return build_family("ltxvideo2", flavour, str(source) if source else None)


# ---- independent reference: ltx-core -----------------------------------------------------------------------
def _randomized(module: torch.nn.Module, scale: float = 0.2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn_like(param) * scale)
    return module


def _audio_vae_module(name: str) -> ModuleType:
    """ltx_core.model.audio_vae.<name>, without running the package's __init__ when that fails on torchaudio
    (imported there for waveform preprocessing, which the vocoder does not use; the project installs ltx-core
    without its dependencies)."""
    package = "ltx_core.model.audio_vae"
    try:
        return importlib.import_module(f"{package}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != "torchaudio":
            raise
    before = set(sys.modules)
    stub = ModuleType(package)
    stub.__path__ = list(importlib.util.find_spec(package).submodule_search_locations)
    sys.modules[package] = stub
    try:
        return importlib.import_module(f"{package}.{name}")
    finally:
        for key in set(sys.modules) - before:
            sys.modules.pop(key)


def _ltx_core_vocoder(meta: dict) -> torch.nn.Module:
    """ltx-core's VocoderWithBWE as its VocoderConfigurator builds it from the header: the 16 kHz generator
    ends with its final activation, the BWE generator without, the mel STFT windows the whole n_fft."""
    vocoder = _audio_vae_module("vocoder")
    stage, bwe = meta["vocoder"]["vocoder"], meta["vocoder"]["bwe"]

    def generator(cfg: dict, final: bool, rate: int) -> torch.nn.Module:
        return vocoder.Vocoder(
            resblock_kernel_sizes=cfg["resblock_kernel_sizes"],
            upsample_rates=cfg["upsample_rates"],
            upsample_kernel_sizes=cfg["upsample_kernel_sizes"],
            resblock_dilation_sizes=cfg["resblock_dilation_sizes"],
            upsample_initial_channel=cfg["upsample_initial_channel"],
            resblock=cfg["resblock"],
            output_sampling_rate=rate,
            activation=cfg["activation"],
            use_tanh_at_final=cfg["use_tanh_at_final"],
            apply_final_activation=final,
            use_bias_at_final=cfg["use_bias_at_final"],
        )

    rates = {
        "input_sampling_rate": bwe["input_sampling_rate"],
        "output_sampling_rate": bwe["output_sampling_rate"],
    }
    return vocoder.VocoderWithBWE(
        vocoder=generator(stage, True, bwe["input_sampling_rate"]),
        bwe_generator=generator(bwe, False, bwe["output_sampling_rate"]),
        mel_stft=vocoder.MelSTFT(bwe["n_fft"], bwe["hop_length"], bwe["n_fft"], bwe["num_mels"]),
        hop_length=bwe["hop_length"],
        **rates,
    )


def _ltx_core_models() -> dict[str, torch.nn.Module]:
    pytest.importorskip("ltx_core", reason="ltx-core not installed (pip install --no-deps ltx-core==1.0.0)")
    from ltx_core.model.transformer.model_configurator import LTXModelConfigurator
    from ltx_core.model.video_vae.model_configurator import VideoDecoderConfigurator, VideoEncoderConfigurator
    from ltx_core.text_encoders.gemma.embeddings_connector import (
        AudioEmbeddings1DConnectorConfigurator,
        Embeddings1DConnectorConfigurator,
    )
    from ltx_core.text_encoders.gemma.feature_extractor import FeatureExtractorV2

    flat = tiny.TEXT_DIM * (tiny.TEXT_LAYERS + 1)
    t = META["transformer"]
    extractor = FeatureExtractorV2(
        video_aggregate_embed=torch.nn.Linear(flat, t["cross_attention_dim"], bias=True),
        embedding_dim=tiny.TEXT_DIM,
        audio_aggregate_embed=torch.nn.Linear(flat, t["audio_cross_attention_dim"], bias=True),
    )
    vocoder = _randomized(_ltx_core_vocoder(META), 0.1)
    with (
        torch.no_grad()
    ):  # STFT / mel bases are file weights (zeros at init): make the BWE stage see a signal
        for name, buffer in vocoder.mel_stft.named_buffers():
            buffer.copy_(torch.rand_like(buffer) if name == "mel_basis" else torch.randn_like(buffer) * 0.1)
    return {
        "dit": _randomized(LTXModelConfigurator.from_config(META).to_empty(device="cpu")),
        "encoder": _randomized(VideoEncoderConfigurator.from_config(META), 0.1),
        "decoder": _randomized(VideoDecoderConfigurator.from_config(META), 0.1),
        "video_connector": _randomized(Embeddings1DConnectorConfigurator.from_config(META).float(), 0.3),
        "audio_connector": _randomized(AudioEmbeddings1DConnectorConfigurator.from_config(META).float(), 0.3),
        "extractor": _randomized(extractor, 0.3),
        "vocoder": vocoder,
    }


def _ltx_core_file(tmp_path: Path) -> tuple[Path, dict[str, torch.nn.Module]]:
    """The ltx-core 2.3 components as one file in the 22B release's layout (prefixes, header)."""
    models = _ltx_core_models()
    tensors = combined_tensors(models)
    for key, value in models["extractor"].state_dict().items():
        tensors[f"text_embedding_projection.{key}"] = value
    tensors.update({f"vocoder.{k}": v for k, v in models["vocoder"].state_dict().items()})
    path = tmp_path / FILE_NAME
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"config": json.dumps(META)}
    )
    return path, models


# ---- the A/V cross-attention timesteps: ltx-core's fixed rule ----------------------------------------------
def _fixed_rule_preprocessor() -> type:
    """The installed ltx-core's MultiModalTransformerArgsPreprocessor with the A/V cross-attention timesteps
    of ltx-core >= 1.1.4 (1.2.0's `_prepare_cross_attention_timestep`): scale/shift from this stream's own
    per-token timesteps, gate from the other stream's sigma x av_ca_timestep_scale_multiplier. ltx-core
    1.0.0, what PyPI has, feeds the other stream's sigma to both; this subclass recomputes the two from the
    modality's inputs after 1.0.0 prepared everything else (a no-op on an ltx-core that has the fixed
    rule)."""
    from ltx_core.model.transformer.transformer_args import MultiModalTransformerArgsPreprocessor

    class FixedRule(MultiModalTransformerArgsPreprocessor):
        def prepare(self, modality, cross_modality=None):
            args = super().prepare(modality, cross_modality)
            if cross_modality is None:
                return args
            batch, dtype = args.x.shape[0], modality.latent.dtype
            scale = self.simple_preprocessor.timestep_scale_multiplier
            scale_shift, _ = self.cross_scale_shift_adaln(
                (modality.timesteps * scale).flatten(), hidden_dtype=dtype
            )
            gate, _ = self.cross_gate_adaln(
                (cross_modality.sigma * self.av_ca_timestep_scale_multiplier).flatten(), hidden_dtype=dtype
            )
            return replace(
                args,
                cross_scale_shift_timestep=scale_shift.view(batch, -1, scale_shift.shape[-1]),
                cross_gate_timestep=gate.view(batch, -1, gate.shape[-1]),
            )

    return FixedRule


def _has_fixed_rule() -> bool:
    """Whether the imported ltx-core prepares the A/V cross-attention timesteps by the fixed rule."""
    from ltx_core.model.transformer.transformer_args import MultiModalTransformerArgsPreprocessor

    method = MultiModalTransformerArgsPreprocessor._prepare_cross_attention_timestep
    return "cross_modality_sigma" in inspect.signature(method).parameters


@contextmanager
def _fixed_rule(dit: torch.nn.Module) -> Iterator[None]:
    """While active, ltx-core 1.0.0's `dit` prepares its A/V cross-attention timesteps by the fixed rule."""
    fixed = _fixed_rule_preprocessor()
    preprocessors = (dit.video_args_preprocessor, dit.audio_args_preprocessor)
    classes = [type(p) for p in preprocessors]
    for preprocessor in preprocessors:
        preprocessor.__class__ = fixed
    try:
        yield
    finally:
        for preprocessor, cls in zip(preprocessors, classes, strict=True):
            preprocessor.__class__ = cls


def _ltx_core_dit() -> torch.nn.Module:
    """The tiny 2.3 transformer built by the imported ltx-core's configurator, random weights."""
    from ltx_core.model.transformer.model_configurator import LTXModelConfigurator

    if hasattr(LTXModelConfigurator, "from_config"):  # 1.0.0
        dit = LTXModelConfigurator.from_config(META)
    else:  # 1.2.0 reads the file's metadata
        dit = LTXModelConfigurator.from_metadata({"config": META})
    return _randomized(dit.to_empty(device="cpu")).eval()


def _diffusers_twin(dit: torch.nn.Module, folder: Path) -> torch.nn.Module:
    """`dit`'s weights as the combined file stores them, loaded by our converter (no family: no hook)."""
    path = folder / "transformer-only.safetensors"
    tensors = {f"model.diffusion_model.{k}": v.contiguous() for k, v in dit.state_dict().items()}
    save_file(tensors, str(path), metadata={"config": json.dumps(META)})
    return load_component(path, "transformer", LTX2VideoTransformer3DModel)


def _transformer_kwargs(sigma: float, audio_sigma: float, first_frame: bool, seed: int = 0) -> dict:
    """Transformer kwargs as the family passes them (timesteps x1000): 2x2x3 video tokens, 5 audio steps,
    video at `sigma` (its first frame clean, timestep 0, with `first_frame`), audio at `audio_sigma`."""
    generator = torch.Generator().manual_seed(seed)
    frames, height, width, steps, length = 2, 2, 3, 5, 7
    t = META["transformer"]
    timestep = torch.full((1, frames * height * width), sigma * 1000.0)
    if first_frame:
        timestep[:, : height * width] = 0.0
    return {
        "hidden_states": torch.randn(1, frames * height * width, 16, generator=generator),
        "audio_hidden_states": torch.randn(1, steps, 32, generator=generator),
        "encoder_hidden_states": torch.randn(1, length, t["cross_attention_dim"], generator=generator),
        "audio_encoder_hidden_states": torch.randn(
            1, length, t["audio_cross_attention_dim"], generator=generator
        ),
        "encoder_attention_mask": torch.ones(1, length, dtype=torch.long),
        "audio_encoder_attention_mask": torch.ones(1, length, dtype=torch.long),
        "timestep": timestep,
        "audio_timestep": torch.tensor([audio_sigma * 1000.0]),
        "sigma": torch.tensor([sigma * 1000.0]),
        "audio_sigma": torch.tensor([audio_sigma * 1000.0]),
        "num_frames": frames,
        "height": height,
        "width": width,
        "fps": 24.0,
        "audio_num_frames": steps,
        "use_cross_timestep": True,  # what LTX2Pipeline passes for 2.3; the hook decides either way
        "return_dict": False,
    }


def _ltx_core_forward(dit: torch.nn.Module, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The imported ltx-core's transformer on the inputs of a diffusers call (`kwargs`): sigmas and per-token
    timesteps in [0, 1], its own positions (pixel bounds / fps, mel bounds)."""
    from ltx_core.components.patchifiers import AudioPatchifier, VideoLatentPatchifier, get_pixel_coords
    from ltx_core.guidance.perturbations import BatchedPerturbationConfig
    from ltx_core.model.transformer.modality import Modality
    from ltx_core.types import AudioLatentShape, SpatioTemporalScaleFactors, VideoLatentShape

    batch, tokens, channels = kwargs["hidden_states"].shape
    frames, height, width, steps = (kwargs[k] for k in ("num_frames", "height", "width", "audio_num_frames"))
    bounds = VideoLatentPatchifier(patch_size=1).get_patch_grid_bounds(
        VideoLatentShape(frames=frames, height=height, width=width, batch=batch, channels=channels)
    )
    positions = get_pixel_coords(bounds, SpatioTemporalScaleFactors.default(), causal_fix=True).float()
    positions[:, 0] = positions[:, 0] / kwargs["fps"]
    audio_positions = AudioPatchifier(patch_size=1).get_patch_grid_bounds(
        AudioLatentShape(frames=steps, mel_bins=16, batch=batch, channels=2)
    )
    empty = BatchedPerturbationConfig.empty
    if "num_blocks" in inspect.signature(empty).parameters:  # ltx-core 1.2.0
        perturbations = empty(batch, len(dit.transformer_blocks))
    else:
        perturbations = empty(batch)
    return dit(
        Modality(
            latent=kwargs["hidden_states"],
            sigma=kwargs["sigma"] / 1000,
            timesteps=(kwargs["timestep"] / 1000).expand(batch, tokens),  # per token: 0 on a clean frame
            positions=positions,
            context=kwargs["encoder_hidden_states"],
            context_mask=kwargs["encoder_attention_mask"],
        ),
        Modality(
            latent=kwargs["audio_hidden_states"],
            sigma=kwargs["audio_sigma"] / 1000,
            timesteps=(kwargs["audio_timestep"] / 1000).view(batch, -1).expand(batch, steps),
            positions=audio_positions,
            context=kwargs["audio_encoder_hidden_states"],
            context_mask=kwargs["audio_encoder_attention_mask"],
        ),
        perturbations,
    )


def _max_abs(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> tuple[float, float]:
    return float((a[0] - b[0]).abs().max()), float((a[1] - b[1]).abs().max())


@contextmanager
def _ltx_core_from(source: str) -> Iterator[ModuleType]:
    """`import ltx_core` from the folder `source` while the block runs; the installed package's modules are
    put back after it."""

    def is_ltx_core(name: str) -> bool:
        return name == "ltx_core" or name.startswith("ltx_core.")

    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if is_ltx_core(name)}
    sys.path.insert(0, source)
    importlib.invalidate_caches()
    try:
        module = importlib.import_module("ltx_core")
        assert Path(module.__file__).resolve().is_relative_to(Path(source).resolve()), module.__file__
        yield module
    finally:
        for name in [name for name in sys.modules if is_ltx_core(name)]:
            del sys.modules[name]
        sys.path.remove(source)
        sys.modules.update(saved)
        importlib.invalidate_caches()


def test_hooked_2_3_transformer_matches_ltx_core_with_the_fixed_av_cross_attention_timesteps(
    tmp_path: Path,
) -> None:
    """Video at sigma 0.2 with a clean first frame (per-token timestep 0), audio at sigma 0.8: our 2.3
    transformer with the family's hook == ltx-core's transformer whose A/V cross-attention AdaLN inputs are
    prepared by the fixed rule of ltx-core >= 1.1.4 (ltx-core 1.0.0's preprocessor patched to it, see
    `_fixed_rule_preprocessor`). Without the hook, diffusers' wiring differs either way it is asked; its
    `use_cross_timestep=True` is ltx-core 1.0.0's old rule."""
    pytest.importorskip("ltx_core", reason="ltx-core not installed (pip install --no-deps ltx-core==1.0.0)")
    dit = _ltx_core_dit()
    model = _diffusers_twin(dit, tmp_path).eval()
    kwargs = _transformer_kwargs(sigma=0.2, audio_sigma=0.8, first_frame=True)
    with torch.no_grad():
        with _fixed_rule(dit):
            expected = _ltx_core_forward(dit, kwargs)
        old_rule = _ltx_core_forward(dit, kwargs)  # the installed ltx-core, as it is
        unhooked = {flag: model(**{**kwargs, "use_cross_timestep": flag}) for flag in (True, False)}
        apply_av_cross_timesteps(model)
        ours = {flag: model(**{**kwargs, "use_cross_timestep": flag}) for flag in (True, False)}
    for flag in (True, False):
        torch.testing.assert_close(ours[flag][0], expected[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours[flag][1], expected[1], atol=1e-4, rtol=1e-4)
        assert min(_max_abs(unhooked[flag], expected)) > 1e-2, flag
    if not _has_fixed_rule():  # ltx-core 1.0.0: the old rule is diffusers' use_cross_timestep=True
        torch.testing.assert_close(unhooked[True][0], old_rule[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(unhooked[True][1], old_rule[1], atol=1e-4, rtol=1e-4)
    video, audio = _max_abs(ours[True], unhooked[True])
    scale = _max_abs(ours[True], tuple(torch.zeros_like(x) for x in ours[True]))
    print(
        f"fixed vs old (use_cross_timestep=True) A/V cross-attention timesteps, tiny 2.3: max |diff| video "
        f"{video:.4f} (outputs up to {scale[0]:.3f}), audio {audio:.4f} (outputs up to {scale[1]:.3f}); "
        f"vs fixed ltx-core: {max(_max_abs(ours[True], expected)):.2e}"
    )


def test_fixed_and_old_av_cross_attention_timesteps_agree_on_one_sigma_without_conditioning() -> None:
    """Both streams at one sigma, no clean token: own timesteps == the other stream's sigma, so the hook
    changes nothing (either use_cross_timestep); a clean first frame alone is enough to tell them apart."""
    model = _randomized(tiny.tiny_components(version="2.3")["transformer"]).eval()
    shared = _transformer_kwargs(sigma=0.6, audio_sigma=0.6, first_frame=False)
    conditioned = _transformer_kwargs(sigma=0.6, audio_sigma=0.6, first_frame=True)
    with torch.no_grad():
        before = {flag: model(**{**shared, "use_cross_timestep": flag}) for flag in (True, False)}
        plain_i2v = model(**conditioned)
        apply_av_cross_timesteps(model)
        after = {flag: model(**{**shared, "use_cross_timestep": flag}) for flag in (True, False)}
        hooked_i2v = model(**conditioned)
    for flag in (True, False):  # per-token vs per-sample AdaLN inputs: the same values, rounding apart
        for a, b in ((after[flag], before[True]), (before[flag], before[True])):
            torch.testing.assert_close(a[0], b[0], atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(a[1], b[1], atol=1e-6, rtol=1e-6)
    assert min(_max_abs(hooked_i2v, plain_i2v)) > 1e-3


def test_av_cross_timesteps_hook_survives_lora_checkpointing_ddp_and_validation(tmp_path: Path) -> None:
    """The family hooks a 2.3 transformer when it loads it (once, however often asked) and not a 2.0 one;
    the hooked model keeps the fixed rule under LoRA, gradient checkpointing and DDP (a one-process gloo
    group) and through build_pipeline; removing the hook brings diffusers' wiring back."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    assert not has_av_cross_timesteps(_family("tiny").load_transformer(torch.float32))
    family = _family()
    model = family.load_transformer(torch.float32)
    assert has_av_cross_timesteps(model)
    _randomized(model)
    apply_av_cross_timesteps(model)  # again: nothing added
    for name in ADALN_MODULES:
        assert getattr(model, name)._diffusers_hook._hook_order == [HOOK_NAME]
    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    kwargs = _transformer_kwargs(sigma=0.2, audio_sigma=0.8, first_frame=True)
    with torch.no_grad():
        reference = model(**kwargs)  # hooked, LoRA, no checkpointing, no wrapper
    apply_gradient_checkpointing(model, 1)
    model.train()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(model)
        output = wrapped(**kwargs)
        (output[0].square().mean() + output[1].square().mean()).backward()
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(output[0], reference[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output[1], reference[1], atol=1e-5, rtol=1e-5)
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
    family.max_sequence_length = 256
    apply_av_cross_timesteps(wrapped)  # through the wrapper: the same model, already hooked
    pipe = family.build_pipeline(model, family.load_vae(torch.float32), family.load_scheduler())
    assert pipe.transformer is model and model._diffusers_hook._hook_order == [HOOK_NAME]
    model.eval()
    remove_av_cross_timesteps(model)
    assert not has_av_cross_timesteps(model)
    with torch.no_grad():
        assert min(_max_abs(model(**kwargs), reference)) > 1e-3


def test_real_fixed_ltx_core_matches_the_hooked_2_3_transformer(tmp_path: Path) -> None:
    """Against the fixed ltx-core itself: LTX_CORE_SRC names the `packages/ltx-core/src` folder of an ltx-core
    >= 1.1.4 checkout (the A/V cross-attention fix), imported for this test instead of the installed 1.0.0."""
    source = os.environ.get("LTX_CORE_SRC")
    if not source:
        pytest.skip(
            "LTX_CORE_SRC is not set (the packages/ltx-core/src folder of an ltx-core >= 1.1.4 checkout)"
        )
    pyproject = Path(source).parent / "pyproject.toml"
    version = (
        next(
            (line.split('"')[1] for line in pyproject.read_text().splitlines() if line.startswith("version")),
            "?",
        )
        if pyproject.exists()
        else "?"
    )
    kwargs = _transformer_kwargs(sigma=0.2, audio_sigma=0.8, first_frame=True)
    with _ltx_core_from(source):
        assert _has_fixed_rule(), f"ltx-core {version} at {source} still has the old A/V timestep wiring"
        dit = _ltx_core_dit()
        model = _diffusers_twin(dit, tmp_path).eval()
        with torch.no_grad():
            expected = _ltx_core_forward(dit, kwargs)
            unhooked = model(**kwargs)
            ours = apply_av_cross_timesteps(model)(**kwargs)
    assert min(_max_abs(unhooked, expected)) > 1e-2  # diffusers' 2.3 default is not what ltx-core computes
    video, audio = _max_abs(ours, expected)
    print(
        f"hooked tiny 2.3 vs ltx-core {version} ({source}): max |diff| video {video:.2e}, audio {audio:.2e}"
    )
    torch.testing.assert_close(ours[0], expected[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours[1], expected[1], atol=1e-4, rtol=1e-4)


def test_ltx_core_2_3_text_stack_and_transformer_match_the_family_training_inputs(tmp_path: Path) -> None:
    """Gemma states -> our cache -> the family's training inputs -> diffusers == ltx-core's feature extractor,
    connectors and transformer, with video and audio at different sigmas and a clean first frame (prompt
    AdaLN on each stream's sigma; A/V cross-attention scale/shift on each stream's own timesteps, gates on the
    other stream's sigma: ltx-core 1.0.0 patched to the fixed rule of >= 1.1.4, `_fixed_rule_preprocessor`).
    The transformer the family loads is hooked to that rule; loaded without the family, it is not and
    differs."""
    path, ref = _ltx_core_file(tmp_path)
    from ltx_core.components.patchifiers import AudioPatchifier, VideoLatentPatchifier, get_pixel_coords
    from ltx_core.guidance.perturbations import BatchedPerturbationConfig
    from ltx_core.model.transformer.modality import Modality
    from ltx_core.text_encoders.gemma.embeddings_processor import EmbeddingsProcessor
    from ltx_core.types import AudioLatentShape, SpatioTemporalScaleFactors, VideoLatentShape

    family = _family("2.3", path)  # the flavour's default file name, in this folder
    model = family.load_transformer(torch.float32)
    assert family.loader.filename == FILE_NAME and family.ltx2_3
    assert not model.config.use_prompt_embeddings and model.config.gated_attn and model.config.cross_attn_mod

    length, real = 256, 9
    mask = torch.zeros(1, length, dtype=torch.long)
    mask[:, length - real :] = 1
    stacked = torch.randn(1, length, tiny.TEXT_DIM, tiny.TEXT_LAYERS + 1) * 3
    encoder = make_prompt_encoder(torch.nn.Identity(), family.connectors(torch.device("cpu"), torch.float32))
    with torch.no_grad():
        cached = encoder.project(stacked, mask)[0, length - real :]
    assert cached.shape == (real, 16 + 8)  # video + audio text widths, real tokens only
    family.max_sequence_length = length
    text = family.collate_text([{PROJ_KEY: cached}])

    frames, height, width, steps = 2, 2, 3, 5
    x0, noise = torch.randn(1, 16, frames, height, width), torch.randn(1, 16, frames, height, width)
    audio = AudioInputs(
        torch.randn(1, steps, 32), torch.randn(1, steps, 32), torch.tensor([0.3]), torch.ones(1, 5)
    )
    first = first_frame_mask(
        1, frames * height * width, height * width, 1.0, torch.Generator().manual_seed(0)
    )
    sigma = torch.tensor([0.7])
    inputs = family.prepare_inputs(
        x0, noise, sigma, text, 24.0, torch.float32, first_frame=first, audio=audio
    )
    kwargs = inputs.kwargs
    assert kwargs["use_cross_timestep"] and not kwargs["isolate_modalities"]

    processor = EmbeddingsProcessor(
        feature_extractor=ref["extractor"],
        video_connector=ref["video_connector"],
        audio_connector=ref["audio_connector"],
    )
    bounds = VideoLatentPatchifier(patch_size=1).get_patch_grid_bounds(
        VideoLatentShape(frames=frames, height=height, width=width, batch=1, channels=16)
    )
    positions = get_pixel_coords(bounds, SpatioTemporalScaleFactors.default(), causal_fix=True).float()
    positions[:, 0] = positions[:, 0] / 24.0
    audio_positions = AudioPatchifier(patch_size=1).get_patch_grid_bounds(
        AudioLatentShape(frames=steps, mel_bins=16, batch=1, channels=2)
    )
    with torch.no_grad():
        video_ctx, audio_ctx, ctx_mask = processor.process_hidden_states(
            tuple(stacked.unbind(-1)), mask, padding_side="left"
        )
        torch.testing.assert_close(kwargs["encoder_hidden_states"], video_ctx, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(kwargs["audio_encoder_hidden_states"], audio_ctx, atol=1e-5, rtol=1e-5)
        with _fixed_rule(ref["dit"]):
            expected = ref["dit"](
                Modality(
                    latent=kwargs["hidden_states"],
                    sigma=sigma,
                    timesteps=kwargs["timestep"] / 1000,  # per token: 0 on the clean first frame
                    positions=positions,
                    context=video_ctx,
                    context_mask=ctx_mask,
                ),
                Modality(
                    latent=kwargs["audio_hidden_states"],
                    sigma=audio.sigmas,
                    timesteps=audio.sigmas.expand(1, steps),
                    positions=audio_positions,
                    context=audio_ctx,
                    context_mask=ctx_mask,
                ),
                BatchedPerturbationConfig.empty(1),
            )
        ours = model(**kwargs)
        plain = load_component(path, "transformer", LTX2VideoTransformer3DModel)  # not through the family
        unhooked = {flag: plain(**{**kwargs, "use_cross_timestep": flag}) for flag in (True, False)}
    assert has_av_cross_timesteps(model) and not has_av_cross_timesteps(plain)
    torch.testing.assert_close(ours[0], expected[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours[1], expected[1], atol=1e-4, rtol=1e-4)
    for flag, outputs in unhooked.items():  # neither of diffusers' own wirings is the fixed rule
        assert not torch.allclose(outputs[0], expected[0], atol=1e-3), flag


def test_ltx_core_2_3_video_vae_and_bwe_vocoder_match(tmp_path: Path) -> None:
    path, ref = _ltx_core_file(tmp_path)
    family = build_family("ltxvideo2", "tiny", None)
    vae = load_component(path, "vae", AutoencoderKLLTX2Video)
    assert vae.config.upsample_type == ("spatiotemporal", "spatiotemporal", "temporal", "spatial")
    pixels = torch.rand(1, 3, 9, 64, 96) * 2 - 1
    with torch.no_grad():
        (entry,) = family.encode_video(vae, pixels)
        torch.testing.assert_close(entry["latents"], ref["encoder"](pixels)[0])
        z = torch.randn(1, 16, 2, 2, 3)
        denormalized = z * vae.latents_std.view(1, -1, 1, 1, 1) + vae.latents_mean.view(1, -1, 1, 1, 1)
        decoded = vae.decode(denormalized).sample
        assert decoded.shape == (1, 3, 9, 64, 96)
        torch.testing.assert_close(decoded, ref["decoder"](z))

    # a decoder with its own timestep conditioning (not the 22B one) keeps ltx-core's `last_*` names
    from ltx_core.model.video_vae.model_configurator import VideoDecoderConfigurator

    conditioned = {"vae": {**META["vae"], "timestep_conditioning": True}}
    config = configs.video_vae_config(conditioned, {"decoder.scale_shift_table": (2, 4)})
    ours = to_original_state_dict(AutoencoderKLLTX2Video(**config).state_dict(), "vae")
    theirs = VideoDecoderConfigurator.from_config(conditioned).state_dict()
    assert {k.removeprefix("vae.decoder.") for k in ours if k.startswith("vae.decoder.")} == {
        k for k in theirs if not k.startswith("per_channel")
    }

    vocoder = load_component(path, "vocoder", LTX2Vocoder)  # the file's header picks the BWE class
    assert isinstance(vocoder, LTX2VocoderWithBWE) and vocoder.config.output_sampling_rate == 48000
    assert vocoder.config.final_act_fn == "clamp" and vocoder.config.bwe_final_act_fn is None
    mel = torch.randn(1, 2, 6, 64) * 2 - 4  # (batch, stereo, 10 ms frames, mel bins): 60 ms
    with torch.no_grad():
        wave = vocoder(mel)
        expected = ref["vocoder"](mel)
    assert wave.shape == (1, 2, 6 * 480)  # 60 ms at 48 kHz
    assert wave.abs().max() > 0.01
    torch.testing.assert_close(wave, expected, atol=1e-5, rtol=1e-4)


# ---- the family on the tiny 2.3 model ---------------------------------------------------------------------
def test_text_cache_rebuilds_the_2_3_pipeline_context(tmp_path: Path) -> None:
    """Cached per-modality projections of the real tokens -> frozen connectors == LTX2Pipeline's 2.3 context,
    from a diffusers-format 2.3 folder (whose vocoder is the BWE one)."""
    folder = tiny.save_tiny_checkpoint(tmp_path / "LTX-2.3-tiny", version="2.3")
    family = _family("2.3", folder)
    assert family.loader.mode == "diffusers"
    tokenizer, encoder = family.load_text_encoder(torch.float32)
    captions = ["a red cat walks in the rain", "dog"]
    items = family.encode_text(tokenizer, encoder, captions, 1024)
    assert [item[PROJ_KEY].shape for item in items] == [(8, 24), (2, 24)]  # <bos> + words; 16 + 8 wide
    pipe = LTX2Pipeline.from_pretrained(folder)
    assert isinstance(pipe.vocoder, LTX2VocoderWithBWE)
    assert isinstance(family._load(LTX2Vocoder, "vocoder", torch.float32), LTX2VocoderWithBWE)
    stacked, mask = pipe._get_gemma_prompt_embeds(
        captions, max_sequence_length=1024, device=torch.device("cpu")
    )
    with torch.no_grad():
        ref_video, ref_audio, ref_mask = pipe.connectors(stacked, mask, padding_side="left")
        connectors = family.connectors(torch.device("cpu"), torch.float32)
        video, audio, ctx_mask = run_connectors(connectors, family.collate_text(items))
    torch.testing.assert_close(video, ref_video)
    torch.testing.assert_close(audio, ref_audio)
    assert torch.equal(ctx_mask, ref_mask)
    with pytest.raises(ValueError, match="another model"):  # a 2.0 cache (32 wide) fed to 2.3 connectors
        run_connectors(connectors, family.collate_text([{PROJ_KEY: torch.randn(3, 32)}]))


def test_family_loads_every_2_3_component_from_the_combined_file(combined: Path) -> None:
    reference = tiny.tiny_components(version="2.3")
    family = _family("2.3", combined.parent)
    assert family.loader.mode == "file" and family.loader.filename == FILE_NAME
    tokenizer, encoder = family.load_text_encoder(torch.float32)  # Gemma from text_encoder/ beside the file
    assert encoder.per_modality and tokenizer("a red cat").input_ids[0] == tokenizer.bos_token_id
    loaded = {
        "transformer": family.load_transformer(torch.float32),
        "vae": family.load_vae(torch.float32),
        "audio_vae": family.load_audio_vae(torch.float32),
        "connectors": family.connectors(torch.device("cpu"), torch.float32),
        "vocoder": family._load(LTX2Vocoder, "vocoder", torch.float32),
    }
    for part, model in loaded.items():
        assert type(model) is type(reference[part]), part
        ours, theirs = model.state_dict(), reference[part].state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), part
    # a 2.3 file is told by its weights: under flavour 2.0 it loads and trains as 2.3
    as_2_0 = _family("2.0", combined)
    assert not as_2_0.ltx2_3
    assert as_2_0.load_transformer(torch.float32).config.cross_attn_mod and as_2_0.ltx2_3
    assert as_2_0.pipeline_call_kwargs(24.0)["use_cross_timestep"]


def _lora_model(family: LTX2Family, targets: list[str], rank: int = 2) -> torch.nn.Module:
    model = family.load_transformer(torch.float32)
    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets))
    return model


def test_training_steps_on_tiny_2_3_with_audio_change_the_lora() -> None:
    family = _family()
    family.audio_options = {"clips": object()}  # a dataset with an `audio` block: all attention is trained
    family.max_sequence_length = 256  # a multiple of the 128 registers, 4x cheaper than 1024 on CPU
    targets = family.lora_targets()
    model = _lora_model(family, targets)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert not any("to_gate_logits" in n for n in names)  # as the LTX-2 trainer: gates are not targets
    assert any("audio_to_video_attn.to_q" in n for n in names)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    text = family.collate_text([{PROJ_KEY: torch.randn(4, 24)}, {PROJ_KEY: torch.randn(6, 24)}])
    tensors = {
        "latents": torch.randn(2, 16, 2, 2, 3),
        "audio_latents": torch.randn(2, 5, 32),
        "audio_mask": torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2]),
    }
    batch = Batch(tensors=tensors, text=text, frame_rate=24.0, use_std=False)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        loss = training_loss(family, model, batch, generator, "shifted_logit_normal", "cpu", torch.float32)
        assert torch.isfinite(loss) and loss > 0
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert len(changed) == len(before)


def test_validation_generates_48khz_audio_with_the_2_3_pipeline() -> None:
    family = _family()
    family.max_sequence_length = 256
    transformer = tiny.tiny_components(version="2.3")["transformer"]  # not loaded by the family: not hooked
    assert not has_av_cross_timesteps(transformer)
    vae, scheduler = family.load_vae(torch.float32), family.load_scheduler()
    pipe = family.build_pipeline(transformer, vae, scheduler)
    assert has_av_cross_timesteps(pipe.transformer)  # samples with ltx-core's A/V cross-attention timesteps
    assert isinstance(pipe.vocoder, LTX2VocoderWithBWE)
    assert family.pipeline_call_kwargs(24.0)["use_cross_timestep"]
    positive, negative = {PROJ_KEY: torch.randn(5, 24)}, {PROJ_KEY: torch.randn(2, 24)}
    video = family.generate(
        pipe,
        positive,
        negative,
        width=64,
        height=64,
        num_frames=9,
        guidance_scale=3.0,
        num_inference_steps=2,
        frame_rate=24.0,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
    )
    assert video.frames.shape == (9, 64, 64, 3) and video.sample_rate == 48000
    # 9 audio latents -> 33 causal mel frames of 10 ms -> 3 x 160 samples each at 48 kHz (0.33 s of 0.375 s)
    assert video.audio.shape == (2, 33 * 480)
    assert float(abs(video.audio).max()) <= 1.0


def test_comfyui_export_of_a_2_3_lora_uses_the_file_names(tmp_path: Path, combined: Path) -> None:
    family = _family()
    model = _lora_model(family, ["to_q", "to_k", "to_v", "to_out.0"], rank=4)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    save_diffusers_lora(tmp_path, LTX2Pipeline, model, {"r": 4, "lora_alpha": 4})
    comfy = load_file(str(family.export_comfyui(tmp_path)))
    assert (tmp_path / COMFYUI_FILE).exists() and all(k.startswith("diffusion_model.") for k in comfy)
    with safe_open(str(combined), framework="pt") as handle:
        file_keys = set(handle.keys())
    modules = {k.rsplit(".lora_", 1)[0] for k in comfy}
    assert "diffusion_model.transformer_blocks.0.video_to_audio_attn.to_out.0" in modules
    missing = [m for m in modules if f"model.{m}.weight" not in file_keys]
    assert not missing, missing[:5]
    # diffusers reads the original-format file back into a 2.3 pipeline: same deltas as the training model
    pipe = LTX2Pipeline(**tiny.tiny_components(version="2.3"))
    pipe.load_lora_weights(tmp_path / COMFYUI_FILE, adapter_name="original")
    block, ours = pipe.transformer.transformer_blocks[1].audio_attn2.to_v, model.transformer_blocks[1]
    torch.testing.assert_close(
        block.get_delta_weight("original"), ours.audio_attn2.to_v.get_delta_weight("default")
    )
    assert (tmp_path / DIFFUSERS_FILE).exists()


def test_2_3_bench_configs_match_the_classes_the_header_inference_and_the_published_size() -> None:
    family = _family("2.3")
    assert family.loader.mode == "hub" and family.loader.filename == FILE_NAME
    assert family.loader.source == "Lightricks/LTX-2.3" and family.ltx2_3
    extra = family.flavours["2.3"].extra
    counts = {}
    for cls, config, infer in (
        (family.transformer_class, extra["transformer_config"], configs.transformer_config),
        (LTX2TextConnectors, extra["connectors_config"], configs.connectors_config),
    ):
        assert set(config) <= set(inspect.signature(cls.__init__).parameters)
        with torch.device("meta"):
            model = cls.from_config(config)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        inferred = infer(None, shapes)  # what a released file without metadata gives
        assert {k: config[k] for k in inferred} == inferred
        counts[cls.__name__] = sum(p.numel() for p in model.parameters())
    # Measured with diffusers 0.42.1: 18,988,838,144 transformer + 3,172,227,584 connector parameters (the
    # connectors hold the per-modality projections, 1.16 B): 22.16 B, LTX-2.3's published 22B.
    assert counts["LTX2VideoTransformer3DModel"] == 18_988_838_144
    assert sum(counts.values()) / 1e9 == pytest.approx(22.0, rel=0.02)
    caption = family.synthetic_caption(family.architecture_config(), 7)
    assert caption[PROJ_KEY].shape == (7, 4096 + 2048)


def test_cli_trains_validates_and_exports_ltx_2_3_from_the_combined_file(tmp_path, monkeypatch) -> None:
    """`cinetune train` with flavour 2.3 on a folder holding the 22B file's tiny twin: clips with sound, audio
    trained, a T2V validation video carrying 48 kHz sound, both LoRA files with 2.3's original names."""
    import av

    from cinetune.cli import main
    from cinetune.data import write_video
    from cinetune.data.audio import tone
    from cinetune.demo import synthetic_clip

    combined = tiny.save_tiny_combined_file(tmp_path / "models" / "LTX-2.3" / FILE_NAME, version="2.3")
    clips = tmp_path / "datasets" / "clips"
    clips.mkdir(parents=True)
    for i, (name, color) in enumerate((("red", (220, 40, 40)), ("blue", (40, 80, 220)))):
        frames = synthetic_clip(color, 20, 64, 64, speed=1 + i)
        write_video(
            clips / f"clip_{i}.mp4", frames, 25, audio=tone(48000, 48000, 330.0 * (i + 1)), sample_rate=48000
        )
        (clips / f"clip_{i}.txt").write_text(f"a {name} square moves across the screen")
    audio = {"auto_split": True, "sample_rate": 16000, "channels": 1, "allow_zero_audio": False}
    datasets = [
        {
            "id": "clips",
            "type": "local",
            "dataset_type": "video",
            "caption_strategy": "textfile",
            "resolution": 64,
            "instance_data_dir": "datasets/clips",
            "cache_dir_vae": "cache/vae",
            "video": {"num_frames": 9},
            "audio": audio,
        },
        {
            "id": "text",
            "type": "local",
            "dataset_type": "text_embeds",
            "default": True,
            "cache_dir": "cache/text",
        },
    ]
    config = {
        "model_type": "lora",
        "model_family": "ltxvideo2",
        "model_flavour": "2.3",
        "pretrained_model_name_or_path": "models/LTX-2.3",
        "output_dir": "output",
        "data_backend_config": "config/multidatabackend.json",
        "train_batch_size": 2,
        "learning_rate": 1e-3,
        "max_train_steps": 2,
        "mixed_precision": "no",
        "seed": 1,
        "lora_rank": 2,
        "lora_alpha": 2,
        "frame_rate": 25,
        "validation_prompt": "a red square moves across the screen",
        "validation_resolution": "64x64",
        "validation_num_video_frames": 9,
        "validation_num_inference_steps": 2,
        "report_to": "none",
    }
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.json").write_text(json.dumps(config))
    (tmp_path / "config" / "multidatabackend.json").write_text(json.dumps(datasets))
    monkeypatch.chdir(tmp_path)
    assert main(["train"]) == 0

    texts = list(Path("cache/text").rglob("*.safetensors"))
    assert texts and {load_file(str(t))[PROJ_KEY].shape[1] for t in texts} == {16 + 8}
    entry = load_file(str(next(Path("cache/vae").rglob("*.safetensors"))))
    # 9 frames at 25 fps: 5760 samples, 37 mel frames, ceil(37 / 4) = 10 steps from the audio VAE, all kept
    # (the pipeline generates round(0.36 s x 25) = 9 for such a clip)
    assert entry["audio_latents"].shape == (10, 32) and bool(entry["audio_mask"].all())
    lines = Path("output/metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    (video,) = sorted(Path("output/validation").rglob("*.mp4"))
    with av.open(str(video)) as container:
        assert container.streams.video[0].frames == 9
        (sound,) = container.streams.audio
        assert sound.codec_context.sample_rate == 48000
    with safe_open(str(combined), framework="pt") as handle:
        file_keys = set(handle.keys())
    comfy = load_file(str(Path("output") / COMFYUI_FILE))
    assert any(".audio_attn1." in k for k in comfy)
    assert all(f"model.{k.rsplit('.lora_', 1)[0]}.weight" in file_keys for k in comfy)


def test_bench_runs_the_tiny_2_3_flavour(tmp_path: Path) -> None:
    """`cinetune bench` builds the 2.3 flavour's transformer and connectors from its configs and trains on
    synthetic captions of the 2.3 cache's shape."""
    from cinetune.cli import main

    path = tmp_path / "bench.json"
    args = [
        "bench",
        "--family",
        "ltxvideo2",
        "--flavour",
        "tiny-2.3",
        "--resolution",
        "64x64",
        "--frames",
        "9",
    ]
    args += ["--steps", "1", "--warmup", "1", "--json", str(path), "--mixed_precision=no", "--lora_rank=2"]
    assert main(args) == 0
    result = json.loads(path.read_text())
    assert result["flavour"] == "tiny-2.3" and result["s_per_step_median"] > 0
