"""loraexp: controlled LoRA fine-tuning experiments on Tinker or an in-process Tinker-compatible client."""

__version__ = "0.1.0"
