"""Captions from a video language model run locally through transformers: Qwen2.5-VL or LLaVA-NeXT-Video
(LLaVA-NeXT-Video-7B is the model the LTX-Video trainer's GUI captions with).

The model's own processor builds the inputs: the chat template with one video entry, the sampled frames as
that video (with their timestamps for Qwen2.5-VL's temporal positions), then `generate` writes the answer
greedily and only the new tokens are decoded. transformers' video processors need torchvision; without it
the backend stops with that message before loading any weights.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from cinetune.errors import ConfigError, NotSupportedYet
from cinetune.prep.captioners import CaptionError, ClipFrames

logger = logging.getLogger(__name__)

DEFAULT_LOCAL_MODEL = "llava-hf/LLaVA-NeXT-Video-7B-hf"
SUPPORTED_MODEL_TYPES = {"qwen2_5_vl": "Qwen2.5-VL", "llava_next_video": "LLaVA-NeXT-Video"}


def check_quantize(quantize: str | None) -> None:
    """8-bit / 4-bit loading comes with the memory work (quantized weights); until then it is refused."""
    if quantize not in (None, "", "none"):
        raise NotSupportedYet(
            f"--quantize {quantize}: loading the captioning model in 8-bit / 4-bit is not supported yet; "
            "leave it out, or caption through --backend openai (e.g. a local vLLM server)"
        )


def model_type(model: str) -> str:
    """The config's model_type of a local folder or hub id (read from config.json, no weights loaded)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--model {model}: cannot read its config ({exc})") from exc
    kind = getattr(config, "model_type", "")
    if kind not in SUPPORTED_MODEL_TYPES:
        names = ", ".join(SUPPORTED_MODEL_TYPES.values())
        raise NotSupportedYet(
            f"--model {model}: a '{kind}' model is not supported yet for captioning; use {names}"
        )
    return kind


class LocalVLMCaptioner:
    """`Captioner` over a transformers video language model."""

    name = "local"

    def __init__(self, model: str, device: str | None = None, max_new_tokens: int = 300) -> None:
        import torch
        from transformers import AutoModelForImageTextToText
        from transformers.utils import is_torchvision_available

        self.kind = model_type(model)
        if not is_torchvision_available():
            raise ConfigError(
                f"the local captioner needs torchvision (transformers' {SUPPORTED_MODEL_TYPES[self.kind]} "
                "video processor uses it): install the torchvision build that matches your torch, or caption "
                "through --backend openai"
            )
        from transformers import AutoProcessor

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.processor = AutoProcessor.from_pretrained(model)
        self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype).to(self.device).eval()
        self.max_new_tokens = max_new_tokens

    def inputs(self, frames: ClipFrames, prompt: str) -> Any:
        """The model's inputs for one clip, built by its own processor."""
        from transformers.video_utils import VideoMetadata

        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        metadata = VideoMetadata(
            total_num_frames=frames.total_frames, fps=frames.fps, frames_indices=list(frames.indices)
        )
        return self.processor(
            text=[text],
            videos=[list(frames.images)],
            video_metadata=[metadata],
            do_sample_frames=False,
            return_tensors="pt",
        )

    def caption(self, frames: ClipFrames, prompt: str) -> str:
        return self.generate(self.inputs(frames, prompt))

    def generate(self, inputs: Any) -> str:
        """Greedy answer to prepared inputs: the new tokens only, special tokens dropped."""
        import torch

        inputs = inputs.to(self.device)
        floating = {k: v.to(self.model.dtype) for k, v in inputs.items() if torch.is_floating_point(v)}
        try:
            with torch.inference_mode():
                out = self.model.generate(
                    **{**inputs, **floating}, max_new_tokens=self.max_new_tokens, do_sample=False
                )
        except torch.OutOfMemoryError as exc:
            raise CaptionError(
                f"out of memory on {self.device}: use fewer --frames or a smaller --frame_size"
            ) from exc
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)[0]

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    def close(self) -> None:
        import torch

        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
