"""Tiny random Kandinsky 5 Video components built from the real diffusers/transformers classes.

What stays real: the VAE compresses 8x in space and 4x in time (four HunyuanVideo blocks), so the tiny model
obeys the same frame rule (4k+1) and sides (multiples of 16); the transformer takes 33 input channels
(16 noisy + 16 condition + 1 mask, `visual_cond=True`) as every released video model does; the Qwen tokenizer
splits the pipeline's chat-template prefix into exactly 128 tokens, as the real Qwen2.5-VL vocabulary does,
so dropping `prompt_template_encode_start_idx` tokens keeps exactly the prompt and `<|im_end|>`.
The modulation layers, zero-initialised by diffusers, get small random weights: with zero gates no
gradient reaches the attention LoRA of a random model.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import regex
import torch
from diffusers import (
    AutoencoderKLHunyuanVideo,
    FlowMatchEulerDiscreteScheduler,
    Kandinsky5I2VPipeline,
    Kandinsky5T2VPipeline,
    Kandinsky5Transformer3DModel,
)
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from cinetune.models.base import keeps_global_rng
from cinetune.models.kandinsky5.configs import TINY_CLIP_DIM, TINY_QWEN_DIM, TINY_TRANSFORMER_CONFIG

_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# The real Qwen2.5 vocabulary has no single token for these words of the template (128 = 125 words + 3).
_REAL_SPLITS = {
    " dynamism": [" dynam", "ism"],
    " scren": [" scr", "en"],
    " postprocessing": [" post", "processing"],
}


def prompt_template() -> tuple[str, int]:
    """The pipeline's chat template and how many tokens it drops, read from diffusers itself."""
    pipe = Kandinsky5T2VPipeline(
        transformer=None,
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        scheduler=None,
    )
    return pipe.prompt_template, pipe.prompt_template_encode_start_idx


@functools.cache
def _qwen_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE trained on the template's words, each a piece the real vocabulary has."""
    template, _ = prompt_template()
    prefix = template.split("{}")[0]
    words: list[str] = []
    for segment in regex.split(r"<\|im_start\|>|<\|im_end\|>", prefix):
        for word in regex.findall(PRETOKENIZE_REGEX, segment):
            words.extend(_REAL_SPLITS.get(word, [word]))
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=100_000,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(_SPECIAL),
        show_progress=False,
    )
    bpe.train_from_iterator(words, trainer)
    merges = [tuple(pair) for pair in json.loads(bpe.to_str())["model"]["merges"]]
    return bpe.get_vocab(), merges


def tiny_qwen_tokenizer() -> Qwen2Tokenizer:
    vocab, merges = _qwen_vocab()
    return Qwen2Tokenizer(
        vocab=dict(vocab), merges=list(merges), additional_special_tokens=list(_SPECIAL[1:])
    )


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """Character-level CLIP BPE: any lower-cased text tokenizes, one token per character."""
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,:;!?'-\"()"))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in chars:
        vocab[char] = len(vocab)
        vocab[f"{char}</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


@keeps_global_rng
def tiny_components(seed: int = 0) -> dict:
    """Fresh tiny components with deterministic random weights (the keys of Kandinsky5T2VPipeline)."""
    tokenizer, tokenizer_2 = tiny_qwen_tokenizer(), tiny_clip_tokenizer()
    vision_ids = [len(tokenizer) + i for i in range(4)]
    special_ids = {
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    }
    torch.manual_seed(seed)
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(
            text_config={
                "hidden_size": TINY_QWEN_DIM,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "vocab_size": len(tokenizer) + 4,
                "rope_scaling": {"mrope_section": [2, 2, 4], "rope_type": "default", "type": "default"},
                **special_ids,
            },
            vision_config={
                "depth": 1,
                "hidden_size": 16,
                "intermediate_size": 16,
                "num_heads": 2,
                "out_hidden_size": TINY_QWEN_DIM,
            },
            vocab_size=len(tokenizer) + 4,
            **special_ids,
            vision_start_token_id=vision_ids[0],
            vision_end_token_id=vision_ids[1],
            image_token_id=vision_ids[2],
            video_token_id=vision_ids[3],
        )
    )
    text_encoder_2 = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer_2),
            hidden_size=TINY_CLIP_DIM,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=TINY_CLIP_DIM,
            bos_token_id=tokenizer_2.bos_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
            pad_token_id=tokenizer_2.pad_token_id,
        )
    )
    transformer = Kandinsky5Transformer3DModel(**TINY_TRANSFORMER_CONFIG)
    generator = torch.Generator().manual_seed(seed + 1)
    for name, module in transformer.named_modules():
        if name.endswith("modulation.out_layer"):
            with torch.no_grad():
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.1)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=16,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        scaling_factor=0.476986,
    )
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": tokenizer_2,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=5.0),
    }


def save_tiny_checkpoint(folder: Path, seed: int = 0, i2v: bool = False) -> Path:
    """Write a tiny Kandinsky 5 Video pipeline in the real diffusers layout (model_index.json, subfolders)."""
    pipeline_class = Kandinsky5I2VPipeline if i2v else Kandinsky5T2VPipeline
    pipeline_class(**tiny_components(seed)).save_pretrained(folder)
    return Path(folder)
