"""Schema of `config.json` / `config.toml`: the training run, in the quickstarts' key names."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from cinetune.config.memory import MemoryOptions, Quantized
from cinetune.config.tread import TreadConfig

Precision = Literal["no", "fp32", "bf16", "fp16"]


def parse_resolutions(value: str) -> list[tuple[int, int]]:
    """'512x768' or '512x768,768x512' -> [(width, height), ...]. A bare '512' means 512x512."""
    out = []
    for part in str(value).replace(" ", "").split(","):
        if not part:
            continue
        if "x" in part:
            w, h = part.lower().split("x", 1)
            out.append((int(w), int(h)))
        else:
            out.append((int(part), int(part)))
    if not out:
        raise ValueError("validation_resolution is empty; use e.g. '768x512' or '768x512,512x768'")
    return out


class TrainConfig(MemoryOptions):
    """One training run. Every key can also be given on the command line as --key=value.

    Frozen: `plan.resolve` fills the defaults a family decides into a copy; nothing changes a config after.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), frozen=True)

    # model
    model_family: str = Field(
        ..., description="Model family: ltxvideo (LTX-Video 0.9.x), ltxvideo2 (LTX-2), kandinsky5-video."
    )
    model_flavour: str | None = Field(
        None, description="Release of the family (see `cinetune check`); default per family."
    )
    pretrained_model_name_or_path: str | None = Field(
        None,
        description="Hub id or local diffusers-format folder (ltxvideo2 also: a folder or hub repo "
        "holding the combined .safetensors checkpoint, or that file). Default: the flavour's hub repo.",
    )
    ltx2_checkpoint_filename: str | None = Field(
        None,
        description="ltxvideo2: name of the combined checkpoint file in the hub repo or folder. "
        "Default: ltx-2-19b-dev.safetensors.",
    )
    model_type: Literal["lora"] = Field("lora", description="What is trained. Only 'lora' is supported yet.")
    lora_type: Literal["standard", "lycoris"] = Field(
        "standard",
        description="Adapter: standard (peft LoRA, DoRA with use_dora) or lycoris (LoKr / LoHa from the "
        "lycoris-lora package, set up by lycoris_config).",
    )
    lycoris_config: Path | None = Field(
        None,
        description="lora_type lycoris: JSON file of LyCORIS settings (algo lokr or loha, linear_dim, "
        "linear_alpha, the algorithm's options such as factor, an optional apply_preset; without one the "
        "adapted modules are lora_target_modules).",
    )
    use_dora: bool = Field(
        False, description="Train DoRA (peft's weight-decomposed LoRA: a magnitude per output row) instead."
    )
    base_model_precision: Literal["no_change", "bf16", "fp16", "fp32"] | Quantized = Field(
        "no_change",
        description="Storage of the transformer's frozen weights: a dtype, or weight-only quantization of "
        "its blocks' linear layers (int8/int4/int2/fp8-quanto, int8/fp8-torchao, nf4-bnb on CUDA) with LoRA "
        "trained on top. no_change: the mixed_precision dtype.",
    )
    vae_dtype: Literal["default", "fp32", "fp16", "bf16"] = Field(
        "default",
        description="Precision for VAE encoding/decoding. default: bf16 on a GPU that has it (fp32 on one "
        "that does not) whatever mixed_precision says, as the text encoders; on the CPU the training dtype.",
    )
    # output and data
    output_dir: Path = Field(
        Path("output"), description="Where checkpoints, LoRA files, validation videos and logs go."
    )
    data_backend_config: Path = Field(
        Path("config/multidatabackend.json"), description="Path of the dataset file (multidatabackend.json)."
    )
    # schedule
    train_batch_size: int = Field(
        1, ge=1, description="Samples per device per step; a batch comes from one bucket."
    )
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        "constant", description="Learning-rate schedule after warmup."
    )
    lr_warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    max_train_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    num_train_epochs: int = Field(
        1,
        ge=0,
        description="Epochs, used when max_train_steps is unset (0, as quickstarts write it: max_train_steps "
        "decides).",
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm; 0 disables clipping.")
    max_nonfinite_steps: int = Field(
        5,
        ge=1,
        description="An optimizer step whose loss or gradient is NaN/inf is skipped (no update, logged); "
        "this many in a row stop the run with exit code 3, naming the last good checkpoint. fp16: the "
        "GradScaler skips overflowing gradients itself; only a non-finite loss counts.",
    )
    mixed_precision: Precision = Field("bf16", description="Compute dtype: bf16, fp16 or no/fp32.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward to save memory."
    )
    gradient_checkpointing_interval: int = Field(
        1,
        ge=1,
        description="With gradient_checkpointing: recompute 1 transformer block in N (1: every block, least "
        "memory; larger N keeps more activations and recomputes less: faster, more memory).",
    )
    seed: int = Field(42, description="Seed of everything random: frame windows, noise, sigmas, dropout.")
    optimizer: Literal["adamw", "adamw_fused"] = Field("adamw", description="Optimizer: torch AdamW.")
    adam_beta1: float = Field(0.9, description="AdamW beta1.")
    adam_beta2: float = Field(0.999, description="AdamW beta2.")
    adam_weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay.")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    caption_dropout_probability: float = Field(
        0.0, ge=0, le=1, description="Probability a sample trains on the empty caption (for CFG)."
    )
    # flow matching
    flow_sigma_sampler: Literal["shifted_logit_normal", "uniform"] = Field(
        "shifted_logit_normal",
        description="How training sigmas are drawn. shifted_logit_normal: sigmoid(N(mu(tokens), 1)), as the "
        "LTX trainers do (ltxvideo2: the LTX-2 trainer's stretched variant with 10% uniform draws).",
    )
    vae_latent_sampling: Literal["sample", "mean"] | None = Field(
        None,
        description="sample: draw x0 from the cached VAE posterior each step; mean: train on the posterior "
        "mean. Default: the family's trainer (ltxvideo: sample; ltxvideo2: mean).",
    )
    first_frame_conditioning_p: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Image-to-video training: probability that the first latent frame stays clean (timestep "
        "0, no loss), so the LoRA keeps working for image-to-video. ltxvideo: one draw per batch, as "
        "LTX-Video-Trainer (its default 0.1); ltxvideo2: one draw per sample (the LTX-2 I2V example uses "
        "0.5). 0 trains text-to-video only.",
    )
    # training extras (each off by default)
    tread_config: TreadConfig | None = Field(
        None,
        description='TREAD token routing: {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 2, '
        '"end_layer_idx": -2}]}: that share of the video tokens (drawn at random per step; conditioning '
        "first-frame tokens always kept) skips those video blocks. Training only.",
    )
    crepa_enabled: bool = Field(
        False,
        description="CREPA: align one video block's hidden states, through a trained projector, with frozen "
        "DINOv2 features of the same and neighbouring frames (cached with the latents).",
    )
    crepa_block_index: int = Field(
        8, ge=0, description="CREPA: the video block (0-based) whose output hidden states are aligned."
    )
    crepa_lambda: float = Field(0.5, ge=0, description="CREPA: weight of the alignment term in the loss.")
    crepa_adjacent_distance: int = Field(
        1, ge=0, description="CREPA: frame distance d of the neighbours aligned besides the frame itself."
    )
    crepa_adjacent_tau: float = Field(
        1.0, gt=0, description="CREPA: temperature of the neighbour weight exp(-d / tau)."
    )
    crepa_model: str = Field(
        "dinov2_vitg14",
        description="CREPA vision encoder: dinov2_vits14 / _vitb14 / _vitl14 / _vitg14 (facebook/dinov2-*), "
        "or a hub id or local folder of a transformers Dinov2Model.",
    )
    crepa_encoder_image_size: int = Field(
        518, ge=14, description="CREPA: frames are resized to this square size for the encoder (vitg14: 518)."
    )
    crepa_drop_vae_encoder: bool = Field(
        False,
        description="CREPA: free the VAE encoder during training. cinetune's CREPA reads the vision features "
        "from the cache and holds no VAE while training, so it changes nothing (said at check).",
    )
    scheduled_sampling_max_step_offset: int = Field(
        0,
        ge=0,
        description="Scheduled sampling (rollout): the most training timesteps (1/1000 of sigma each) the "
        "model's own no-grad Euler steps move a sample's input down to its training sigma. 0: off.",
    )
    scheduled_sampling_probability: float = Field(
        0.0, ge=0, le=1, description="Probability that a sample rolls out (without a ramp)."
    )
    scheduled_sampling_prob_start: float = Field(
        0.0,
        ge=0,
        le=1,
        description="With scheduled_sampling_ramp_steps: the probability at the ramp's start.",
    )
    scheduled_sampling_prob_end: float = Field(
        0.5, ge=0, le=1, description="With scheduled_sampling_ramp_steps: the probability at the ramp's end."
    )
    scheduled_sampling_ramp_steps: int = Field(
        0,
        ge=0,
        description="Optimizer steps over which the probability goes from _prob_start to _prob_end (0: no "
        "ramp, scheduled_sampling_probability).",
    )
    scheduled_sampling_start_step: int = Field(
        0, ge=0, description="Optimizer step where the ramp starts (before it: _prob_start)."
    )
    scheduled_sampling_ramp_shape: Literal["linear", "cosine"] = Field(
        "linear", description="Shape of the probability ramp."
    )
    scheduled_sampling_strategy: Literal["uniform", "biased_early", "biased_late"] = Field(
        "uniform",
        description="How a rollout length in 0..max is drawn: uniform, biased_early (short ones more often: "
        "round(u^2 max)), biased_late (long ones: round((1 - u^2) max)).",
    )
    scheduled_sampling_sampler: Literal["euler"] = Field(
        "euler", description="Solver of the rollout steps: euler (flow matching: x <- x + (s' - s) v)."
    )
    scheduled_sampling_reflexflow: bool = Field(
        False,
        description="ReflexFlow's anti-drift and frequency-compensation terms during rollout: not built "
        "(true is rejected); false, as the quickstarts set it.",
    )
    # lora
    lora_rank: int = Field(64, ge=1, description="LoRA rank.")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha. Default: lora_rank (scale 1).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_target_modules: list[str] | None = Field(
        None, description="Module names to adapt. Default: the family's attention projections."
    )
    init_lora: Path | None = Field(None, description="Start from the weights of this LoRA .safetensors file.")
    lora_init_type: Literal["default", "gaussian"] = Field(
        "default",
        description="LoRA init (peft init_lora_weights): default (A random, B zero) or gaussian. "
        "PiSSA/OLoRA are not supported: they rewrite the frozen weights, so an exported LoRA would not fit "
        "the base model.",
    )
    # EMA of the trained weights
    use_ema: bool = Field(
        False,
        description="Keep an exponential moving average of the trained (LoRA) weights; it is saved in "
        "checkpoints and exported beside the LoRA as OUTPUT_DIR/ema/ (same file names).",
    )
    ema_decay: float = Field(
        0.995, gt=0, lt=1, description="EMA decay (the average keeps d of itself per update)."
    )
    ema_update_interval: int = Field(1, ge=1, description="Update the EMA every N optimizer steps.")
    ema_device: Literal["cpu", "accelerator"] = Field(
        "cpu", description="Where the EMA weights live: cpu (no device memory) or accelerator (faster)."
    )
    ema_warmup_steps: int = Field(
        0,
        ge=0,
        description="Up to this optimizer step the EMA copies the weights, then it uses ema_decay flat. 0: "
        "diffusers' ramp: the n-th update uses min(ema_decay, n / (n + 9)), the first copies.",
    )
    ema_validation: Literal["none", "ema_only", "comparison"] = Field(
        "comparison",
        description="With use_ema: validate with the trained weights (none), the EMA weights (ema_only), or "
        "both (comparison: the EMA videos are named <prompt>_ema_<W>x<H>.mp4).",
    )
    # checkpoints
    checkpointing_steps: int | None = Field(
        None,
        ge=1,
        description="Save a resumable checkpoint every N steps (also spelled checkpoint_step_interval).",
    )
    checkpoints_total_limit: int | None = Field(None, ge=1, description="Keep at most this many checkpoints.")
    resume_from_checkpoint: str | None = Field(
        None, description="'latest' or a checkpoint folder; resumes the run exactly where it stopped."
    )
    # validation
    validation_steps: int | None = Field(
        None,
        ge=1,
        description="Generate validation videos every N steps (also spelled validation_step_interval).",
    )
    validation_prompt: str | None = Field(
        None,
        description="Prompt of the validation videos. Unset with validation_steps set: the first caption of "
        "the first training sample (logged), so a quickstart without a prompt still validates.",
    )
    validation_negative_prompt: str = Field(
        "", description="Negative prompt for validation (with guidance > 1)."
    )
    validation_prompt_library: Path | dict[str, str] | None = Field(
        None, description="JSON file (or inline object) of name -> prompt; each is generated at validation."
    )
    validation_resolution: str = Field("768x512", description="'WxH' or several: '768x512,512x768'.")
    validation_num_video_frames: int = Field(49, ge=1, description="Frames of each validation video.")
    validation_guidance: float = Field(
        3.0, ge=0, description="Classifier-free guidance scale for validation."
    )
    validation_num_inference_steps: int = Field(
        30,
        ge=2,
        description="Denoising steps for validation (at least 2: the LTX schedulers' terminal shift).",
    )
    validation_seed: int | None = Field(None, description="Seed of the validation noise. Default: seed.")
    disable_validation: bool = Field(False, description="Never generate validation videos.")
    validation_using_datasets: bool = Field(
        False,
        description="Image-to-video flavours: condition validation videos on first frames of the training "
        "clips (or the eval_dataset_id dataset's images) instead of the first frame of a text-to-video "
        "generation.",
    )
    eval_dataset_id: str | None = Field(
        None,
        description="Image-to-video flavours: id of a dataset whose images (first frames of videos) "
        "condition the validation videos; that dataset is not trained on.",
    )
    frame_rate: float = Field(
        25.0, gt=0, description="Frames per second of training clips and validation videos."
    )
    # logging
    report_to: Literal["tensorboard", "wandb", "none"] = Field("tensorboard", description="Where metrics go.")
    tracker_project_name: str = Field("cinetune", description="Project name for the tracker.")
    tracker_run_name: str | None = Field(None, description="Run name for the tracker.")
    logging_steps: int = Field(1, ge=1, description="Write metrics every N steps.")
    # memory and devices
    offload_during_startup: bool = Field(
        False,
        description="The models validation decodes with (the VAE; LTX-2 also its audio VAE and vocoder) wait "
        "on the CPU between validations and visit the device only while they decode. Caching never holds the "
        "text encoder and the VAE on the device together, with or without this key: the text encoder is "
        "freed before the VAE loads.",
    )
    attention_backend: str = Field(
        "native",
        description="diffusers attention backend: native (torch SDPA), _native_cudnn, _native_flash, flash, "
        "_flash_3, sage, xformers... (the backend's package must be installed).",
    )
    compile_transformer_blocks: bool | None = Field(
        None,
        description="torch.compile the repeated transformer blocks (regional compilation). Default: on for "
        "the Kandinsky 5 NABLA flavours (uncompiled flex attention materialises the full score matrix and "
        "runs out of memory), off otherwise; false turns it off.",
    )
    num_processes: int = Field(
        1,
        ge=1,
        description="Processes to launch in all (DDP through accelerate; FSDP2 with fsdp_enable). With "
        "num_machines > 1 this is the total over all machines, as in accelerate.",
    )
    num_machines: int = Field(
        1, ge=1, description="Machines (nodes) the run spans; each starts `cinetune train`."
    )
    machine_rank: int = Field(
        0, ge=0, description="This machine's rank, 0 .. num_machines-1 (0: the main one)."
    )
    main_process_ip: str | None = Field(
        None, description="Address of machine 0, which every machine connects to (num_machines > 1)."
    )
    main_process_port: int = Field(
        29500, ge=1, le=65535, description="Port of machine 0 for the rendezvous (num_machines > 1)."
    )
    cpu: bool = Field(False, description="Train on CPU even when a GPU is present (tests, demos).")
    max_sequence_length: int | None = Field(None, ge=1, description="Text tokens. Default: the family's.")

    @field_validator("validation_resolution")
    @classmethod
    def _resolutions_parse(cls, value: str) -> str:
        parse_resolutions(value)
        return value

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _fp32_is_no(cls, value: object) -> object:
        return "no" if value == "fp32" else value

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.num_train_epochs == 0 and self.max_train_steps is None:
            raise ValueError("num_train_epochs is 0 and max_train_steps is unset: set one of them")
        if self.gradient_checkpointing_interval > 1 and not self.gradient_checkpointing:
            raise ValueError(
                "gradient_checkpointing_interval has no effect without gradient_checkpointing: "
                "set gradient_checkpointing true, or remove the interval"
            )
        return self

    @property
    def resolutions(self) -> list[tuple[int, int]]:
        return parse_resolutions(self.validation_resolution)

    @property
    def effective_lora_alpha(self) -> float:
        return float(self.lora_alpha if self.lora_alpha is not None else self.lora_rank)
