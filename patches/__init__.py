"""Per-model patchers. PLACEHOLDER until the patcher lands (issue 3)."""


def patch_model(model, *, mode="auto"):
    raise NotImplementedError("patch_model is not implemented yet")


def unpatch_model(model):
    raise NotImplementedError("unpatch_model is not implemented yet")


def patched(model, *, mode="auto"):
    raise NotImplementedError("patched is not implemented yet")
