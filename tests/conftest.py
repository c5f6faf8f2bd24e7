"""Test setup: without CUDA, run the real Triton kernels in Triton's interpreter on CPU tensors.

TRITON_INTERPRET must be set before any kernel is defined, i.e. before hf_masked_softmax is imported.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def pytest_configure(config):
    # Triton's interpreter before 3.7 turns one-element arrays into Python scalars, which numpy 2.3 and newer refuse:
    # every kernel test would fail with "only 0-dimensional arrays can be converted to Python scalars". Say so once.
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    import numpy
    import triton

    def release(v):
        return tuple(int(x) for x in v.split("+")[0].split(".")[:2])

    if release(triton.__version__) < (3, 7) and release(numpy.__version__) >= (2, 3):
        pytest.exit(f"triton {triton.__version__}'s interpreter (which runs the kernels on the CPU here) cannot run "
                    f"with numpy {numpy.__version__}: install 'numpy<2.3' or triton>=3.7", returncode=4)


def _gluon_hopper_missing():
    """Why this Triton cannot build the Hopper (Gluon) kernel, or None: Gluon's Hopper API came with Triton 3.5. The
    library then runs its Triton kernels on Hopper too; the tests that compile the Gluon kernels have nothing to do."""
    import triton

    from hf_masked_softmax import _hopper

    if _hopper.kernels() is None:
        return f"triton {triton.__version__} has no Gluon Hopper API (the library runs its Triton kernels there)"
    return None


def pytest_collection_modifyitems(config, items):
    if any("gluon" in item.keywords for item in items):
        missing = _gluon_hopper_missing()
        if missing:
            for item in items:
                if "gluon" in item.keywords:
                    item.add_marker(pytest.mark.skip(reason=missing))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device():
    return DEVICE
