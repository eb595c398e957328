"""A small contract for end-to-end tests: the demo pipeline shrunk to seconds (tiny base, few rows, few steps)."""

from __future__ import annotations

from pathlib import Path

from datakit import make_config, set_key

SMALL = {
    "data": {"demo_rows": 700},
    "benchmark": {"demo_rows": 24},
    "lr_select": {"train_rows": 32, "val_rows": 16, "lr_grid": [1e-3, 3e-3], "steps": 4, "validate_at": [2, 4],
                  "batch_size_candidates": [], "batch_size_lr_grid": [], "throughput_steps": 1},
    "train": {"seeds": [0, 1], "epochs": 1, "batch_size": 32, "eval_every": 4, "epoch_end_margin": 1},
    "eval": {"max_new_tokens": 12, "determinism_subset": 4},
    "decision": {"bootstrap_samples": 200},
}


def small_config(tmp_path: Path, base_dir: Path, **sections: dict) -> Path:
    """configs/demo.toml shrunk (SMALL), with artifacts under tmp_path and `base_dir` as the base model."""
    path = make_config(tmp_path)
    text = set_key(path.read_text(encoding="utf-8"), "experiment", "base_model", str(base_dir))
    for section, values in {**SMALL, **sections}.items():
        for key, value in {**SMALL.get(section, {}), **values}.items():
            text = set_key(text, section, key, value)
    path.write_text(text, encoding="utf-8")
    return path
