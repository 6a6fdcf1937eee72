"""Tiny random Qwen2.5-VL and LLaVA-NeXT-Video built from their real transformers classes, saved in the
hub layout (config.json, model.safetensors, tokenizer files), with a tokenizer that knows their special
tokens and the words of a fixed answer.

transformers builds these models' processors only with torchvision, which this machine cannot have, so
`video_inputs` lays out what the processor would hand the model (the video tensor and one placeholder token
per video token) for the tests that run `generate` without it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)

ANSWER_WORD = " waves"  # the rigged model answers this token, again and again
QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
LLAVA_SPECIAL = ["<unk>", "<s>", "</s>", "<video>", "<image>"]
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for c in message['content'] %}"
    "{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>{% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: {% for c in message['content'] %}"
    "{% if c['type'] == 'video' %}<video>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def tokenizer(special: list[str], eos: str, pad: str, template: str) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(["the sea waves roll under a grey sky, the camera pans"] * 4, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=eos, pad_token=pad)
    tok.chat_template = template
    return tok


def _rig(model: torch.nn.Module, token_id: int, vocab: int) -> None:
    """Make `token_id` the greedy answer at every step, whatever the random network computes: the saved
    generation config suppresses every other token (a real generation setting, read by `generate`)."""
    model.generation_config.suppress_tokens = [i for i in range(vocab) if i != token_id]


def answer_token(tok: PreTrainedTokenizerFast) -> int:
    (token_id,) = tok.encode(ANSWER_WORD, add_special_tokens=False)
    return token_id


def tiny_qwen(folder: Path) -> Path:
    tok = tokenizer(QWEN_SPECIAL, "<|im_end|>", "<|endoftext|>", QWEN_TEMPLATE)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    common = {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "vocab_size": len(tok),
            "rope_scaling": {"mrope_section": [2, 2, 4], "rope_type": "default", "type": "default"},
            **common,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": 32,
            "fullatt_block_indexes": [0],
        },
        vocab_size=len(tok),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        **common,
    )
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    _rig(model, answer_token(tok), len(tok))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_llava_next_video(folder: Path) -> Path:
    tok = tokenizer(LLAVA_SPECIAL, "</s>", "<unk>", LLAVA_TEMPLATE)
    ids = {t: tok.convert_tokens_to_ids(t) for t in LLAVA_SPECIAL}
    config = LlavaNextVideoConfig(
        text_config=LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=len(tok),
            bos_token_id=ids["<s>"],
            eos_token_id=ids["</s>"],
            pad_token_id=ids["<unk>"],
        ).to_dict(),
        vision_config=CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ).to_dict(),
        video_token_index=ids["<video>"],
        image_token_index=ids["<image>"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        spatial_pool_stride=2,
        image_grid_pinpoints=[[32, 32]],
    )
    torch.manual_seed(0)
    model = LlavaNextVideoForConditionalGeneration(config).eval()
    _rig(model, answer_token(tok), len(tok))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def video_inputs(folder: Path, kind: str, num_frames: int, prompt: str):
    """What the model's processor hands the model for one video of `num_frames` frames: the chat text with
    the video placeholder repeated once per video token, and a video tensor in the model's layout."""
    from transformers import AutoTokenizer, BatchFeature

    tok = AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    generator = torch.Generator().manual_seed(0)
    if kind == "qwen2_5_vl":  # 56x56 frames: a 4x4 patch grid, 2x2 merged, 2 frames per temporal patch
        grid = torch.tensor([[num_frames // 2, 4, 4]])
        pixels = torch.randn(int(grid.prod()), 3 * 2 * 14 * 14, generator=generator)
        text = text.replace("<|video_pad|>", "<|video_pad|>" * (int(grid.prod()) // 4))
        extra = {"pixel_values_videos": pixels, "video_grid_thw": grid}
    else:  # 32x32 frames: a 4x4 patch grid pooled 2x2, four tokens per frame
        pixels = torch.randn(1, num_frames, 3, 32, 32, generator=generator)
        text = text.replace("<video>", "<video>" * (4 * num_frames))
        extra = {"pixel_values_videos": pixels}
    encoded = tok([text], return_tensors="pt")
    return BatchFeature({**encoded, **extra})
