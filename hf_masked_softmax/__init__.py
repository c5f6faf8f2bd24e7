"""hf-masked-softmax: Triton masked softmax and fused attention for Hugging Face models.

Public names: ``masked_softmax``, ``attention``, ``patch_model``, ``unpatch_model``, ``patched``.
"""
import importlib.util as _ilu
import os as _os
import sys as _sys

from .masked_softmax import masked_softmax
from .attention import attention


def _load_source_tree_patches():
    # Installed wheels map the top-level ``patches/`` folder to ``hf_masked_softmax.patches``. Run from a source
    # checkout (PYTHONPATH=.), that mapping does not exist, so load the folder under the same name by hand.
    if _ilu.find_spec(__name__ + ".patches") is not None:
        return
    root = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "patches")
    spec = _ilu.spec_from_file_location(
        __name__ + ".patches", _os.path.join(root, "__init__.py"), submodule_search_locations=[root]
    )
    module = _ilu.module_from_spec(spec)
    _sys.modules[spec.name] = module
    spec.loader.exec_module(module)


_load_source_tree_patches()

from .patches import patch_model, patched, unpatch_model  # noqa: E402

__all__ = ["masked_softmax", "attention", "patch_model", "unpatch_model", "patched"]
__version__ = "0.1.0"
