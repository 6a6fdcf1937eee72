"""The local captioner on tiny random Qwen2.5-VL and LLaVA-NeXT-Video built from their real classes.

transformers builds these models' processors only with torchvision (not installable beside torch 2.13 on a
CPU-only machine), so here the processor's output is laid out by `tiny_vlm.video_inputs` and the captioner's
`generate` runs the real model on it; the whole path through the processor runs where torchvision exists.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoTokenizer
from transformers.utils import is_torchvision_available

from cinetune.errors import ConfigError, NotSupportedYet
from cinetune.prep.captioning import CaptionOptions, caption_folder, make_captioner
from cinetune.prep.local_vlm import LocalVLMCaptioner

from .tiny_vlm import ANSWER_WORD, tiny_llava_next_video, tiny_qwen, video_inputs

BUILDERS = {"qwen2_5_vl": tiny_qwen, "llava_next_video": tiny_llava_next_video}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def tiny_vlm(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, BUILDERS[request.param](tmp_path_factory.mktemp(request.param) / "model")


def _captioner(folder: Path) -> LocalVLMCaptioner:
    """The captioner around the real model, its tokenizer standing in for the processor it cannot build."""
    captioner = LocalVLMCaptioner.__new__(LocalVLMCaptioner)
    captioner.device = torch.device("cpu")
    captioner.processor = AutoTokenizer.from_pretrained(folder)
    captioner.model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    captioner.max_new_tokens = 3
    return captioner


def test_generate_answers_from_the_video_with_new_tokens_only(tiny_vlm) -> None:
    kind, folder = tiny_vlm
    captioner = _captioner(folder)
    seen = []
    tower = captioner.model.model.visual if kind == "qwen2_5_vl" else captioner.model.model.vision_tower
    handle = tower.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    try:
        answer = captioner.generate(video_inputs(folder, kind, 4, "Describe the clip."))
    finally:
        handle.remove()
    assert answer == ANSWER_WORD * 3  # the prompt is not echoed: only the three new tokens
    expected = (4 // 2 * 16, 3 * 2 * 14 * 14) if kind == "qwen2_5_vl" else (4, 3, 32, 32)
    assert seen and tuple(seen[0]) == expected  # the vision tower saw the video's frames (one pass)


def test_the_local_backend_names_what_it_needs(tiny_vlm) -> None:
    _, folder = tiny_vlm
    with pytest.raises(NotSupportedYet, match="8-bit / 4-bit is not supported yet"):
        make_captioner(CaptionOptions(backend="local", model=str(folder), quantize="8bit"))
    if is_torchvision_available():
        pytest.skip("torchvision is installed: the full path is tested below")
    with pytest.raises(ConfigError, match="needs torchvision"):
        LocalVLMCaptioner(str(folder))


def test_a_model_that_is_not_a_video_captioner_is_refused(tmp_path: Path) -> None:
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1).save_pretrained(tmp_path)
    with pytest.raises(NotSupportedYet, match="a 'llama' model is not supported yet for captioning"):
        LocalVLMCaptioner(str(tmp_path))


@pytest.mark.skipif(not is_torchvision_available(), reason="transformers' video processors need torchvision")
def test_full_local_path_through_the_processor(tiny_vlm, clip_folder: Path) -> None:
    from transformers import AutoProcessor, LlavaNextVideoProcessor, Qwen2_5_VLProcessor
    from transformers.models.llava_next_video.video_processing_llava_next_video import (
        LlavaNextVideoVideoProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    kind, folder = tiny_vlm
    tok = AutoTokenizer.from_pretrained(folder)
    if kind == "qwen2_5_vl":
        from transformers import Qwen2VLImageProcessor

        sizes = {"min_pixels": 56 * 56, "max_pixels": 56 * 56}
        processor = Qwen2_5_VLProcessor(
            Qwen2VLImageProcessor(**sizes),
            tok,
            Qwen2VLVideoProcessor(**sizes),
            chat_template=tok.chat_template,
        )
    else:
        from transformers import LlavaNextImageProcessor

        crop = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}
        processor = LlavaNextVideoProcessor(
            LlavaNextVideoVideoProcessor(**crop),
            LlavaNextImageProcessor(**crop),
            tok,
            chat_template=tok.chat_template,
            patch_size=8,
            vision_feature_select_strategy="default",
        )
    processor.save_pretrained(folder)
    assert type(AutoProcessor.from_pretrained(folder)) is type(processor)
    report = caption_folder(
        clip_folder,
        CaptionOptions(backend="local", model=str(folder), frames=4, max_new_tokens=2, trigger="APT"),
    )
    assert len(report.done) == 5
    assert (clip_folder / "clip_00.txt").read_text() == f"APT{ANSWER_WORD * 2}\n"
