"""Session fixtures shared by the pipeline, CLI and fault tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def small_base(tmp_path_factory) -> Path:
    """A tiny Qwen3 on the demo tokenizer, pretrained for a handful of steps: a real base model in ~2 s."""
    from loraexp.demo.base_model import DemoBaseRecipe, ensure_demo_base

    recipe = DemoBaseRecipe(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128, examples=256, steps=4, batch_size=16, warmup_steps=1)
    return ensure_demo_base(tmp_path_factory.mktemp("cache"), recipe)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, small_base) -> Path:
    """The small contract run end to end, uninterrupted and fault-free, by a real `loraexp run` process."""
    from crashkit import make_workdir, run_to_end

    workdir = make_workdir(tmp_path_factory.mktemp("reference"), small_base)
    run_to_end(workdir, "run", "--config", "demo.toml")
    return workdir


@pytest.fixture(scope="session")
def rendered(tmp_path_factory, small_base) -> Path:
    """The small contract (artifacts under the relative artifacts/) with finished build-data and render runs."""
    from crashkit import make_workdir, run_to_end

    workdir = make_workdir(tmp_path_factory.mktemp("rendered"), small_base)
    run_to_end(workdir, "run", "--config", "demo.toml", "--only", "build-data")
    run_to_end(workdir, "run", "--config", "demo.toml", "--only", "render")
    return workdir


@pytest.fixture
def rendered_copy(rendered, tmp_path, monkeypatch) -> Path:
    """A private copy of `rendered`, as the current directory."""
    from crashkit import private_copy

    return private_copy(rendered, tmp_path / "w", monkeypatch)
