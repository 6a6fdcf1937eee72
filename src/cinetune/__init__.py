"""cinetune: fine-tune video diffusion models (LoRA) on your own clips."""

__version__ = "0.1.0"
