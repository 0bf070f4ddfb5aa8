import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
#: shared data (kodak/, train/): $ILC_SHARED/data when set (a worktree elsewhere), else beside the checkout
SHARED = Path(os.environ.get("ILC_SHARED") or ROOT.parent / "shared") / "data"
SAMPLE = ROOT / "ilc_export" / "data" / "kodim23.png"

#: the start of a `python -c` script for a box without PyTorch: any import of torch fails as
#: it does where torch is not installed
BLOCK_TORCH = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return None

sys.meta_path.insert(0, NoTorch())
"""


@pytest.fixture(scope="session", autouse=True)
def _threads():
    try:
        import torch

        torch.set_num_threads(min(2, os.cpu_count() or 1))
    except ImportError:
        pass


def randomize(model, scale=0.05, seed=0):
    """Perturb every parameter (the zero-initialised last convs make a fresh model trivial)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


@pytest.fixture
def sample_image():
    from PIL import Image

    return np.asarray(Image.open(SAMPLE).convert("RGB"))


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A tiny randomised ILC checkpoint with codec tables (session-wide)."""
    import torch

    from ilc_export.export.tables_build import finalize_checkpoint
    from ilc_reference.checkpoint import save_checkpoint
    from ilc_reference.config import tiny_config
    from ilc_reference.model import build_model

    torch.manual_seed(0)
    model = randomize(build_model(tiny_config()), 0.05).eval()
    path = save_checkpoint(model, tmp_path_factory.mktemp("tiny") / "ilc-tiny")
    finalize_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def codec(tiny_ckpt):
    """An ImageCodec on the tiny checkpoint, torch backend, one thread (deterministic timing-free tests)."""
    import torch

    from ilc_export.pipeline.api import open_codec

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield open_codec(tiny_ckpt, backend="torch")
    torch.set_num_threads(threads)
