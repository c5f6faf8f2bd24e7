"""The one tolerance table of the test-suite: results against an fp64 reference, keyed by dtype."""
import torch

# (atol, rtol) of |out - ref| <= atol + rtol * |ref|, ref computed in float64.
TOLERANCES = {
    torch.float32: (1e-6, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (8e-3, 8e-3),
}


def assert_close(out, ref, dtype=None, *, scale=1.0):
    """Compare ``out`` with the fp64 ``ref`` under the table's row for ``dtype`` (default ``out.dtype``).

    ``scale`` widens the row for results that accumulate several rounded terms (attention outputs, gradients).
    """
    atol, rtol = TOLERANCES[dtype or out.dtype]
    torch.testing.assert_close(out.double(), ref.double(), atol=atol * scale, rtol=rtol * scale, equal_nan=True)
