"""Test setup: import the pack as the package ``comfyui_opensora`` without ComfyUI."""

from __future__ import annotations

import json
import os
import runpy
import shutil
from pathlib import Path

import pytest

PACK_ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden_v1"

runpy.run_path(str(PACK_ROOT / "__main__.py"))["import_pack"]()  # the pack's one bootstrap


@pytest.fixture
def golden_dir() -> Path:
    """The golden outputs of the official Open-Sora code (copied from shared/fixtures/golden_v1)."""
    return GOLDEN


@pytest.fixture
def standalone_host(tmp_path):
    """Point the host adapter at temporary model and output folders; restore afterwards."""
    from comfyui_opensora import host

    state = host.standalone_state()
    saved = (state.models_dir, state.output_dir, state.device)
    models, output = tmp_path / "models", tmp_path / "output"
    for folder in (host.DIFFUSION_MODELS, host.TEXT_ENCODERS, host.VAE):
        (models / folder).mkdir(parents=True)
    output.mkdir()
    host.configure_standalone(models_dir=models, output_dir=output, device="cpu")
    yield host
    state.models_dir, state.output_dir, state.device = saved
    state.interrupt_requested = False


@pytest.fixture
def tiny_model(standalone_host):
    """The golden video MMDiT placed in the diffusion_models folder and loaded by the Model Loader (fp32)."""
    from comfyui_opensora.nodes.model_loader import OpenSoraModelLoader

    folder = standalone_host.folder_paths(standalone_host.DIFFUSION_MODELS)[0]
    shutil.copy(GOLDEN / "mmdit_forward" / "video_model.safetensors", folder / "video_model.safetensors")
    (model,) = OpenSoraModelLoader().execute("video_model.safetensors", "fp32")
    return model


@pytest.fixture
def one_thread():
    """Tiny tensors: thread start-up and contention cost far more than the arithmetic (10x on 2 busy cores).
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


GOLDEN_FIXTURES = {"golden_dir", "golden", "golden_models", "t2v_case", "i2v_case", "case"}


def pytest_collection_modifyitems(items):
    """Mark every comparison with the official code's outputs ``golden`` (CI re-runs them on another
    kernel path with ``-m golden``): tests using a golden fixture or living in a golden module."""
    for item in items:
        module = getattr(item, "module", None)
        if GOLDEN_FIXTURES & set(getattr(item, "fixturenames", ())) or getattr(module, "GOLDEN_MODULE", False):
            item.add_marker(pytest.mark.golden)


def pytest_terminal_summary(terminalreporter):
    """One line: the worst golden error as a fraction of its float32 bound (the README's margins)."""
    from golden_tolerance import OBSERVED

    if OBSERVED:
        test, what, error, ratio = max(OBSERVED, key=lambda row: row[3])
        terminalreporter.write_line(
            f"golden: {len(OBSERVED)} comparisons; worst {ratio:.3f} of its float32 bound "
            f"(max abs error {error:.3g}, {what}, {test})"
        )
        report = os.environ.get("GOLDEN_REPORT")
        if report:  # every comparison, for the README's Exactness table
            rows = [{"test": t, "what": w, "max_abs_error": e, "fraction_of_bound": r} for t, w, e, r in OBSERVED]
            Path(report).write_text(json.dumps(rows, indent=1))
