"""Files shipped inside the package: the Qwen3 chat template and the demo contract (see README.md here)."""
