"""The wheel as pip builds it: what it holds, and that the installed package (not this checkout) imports and patches.

The rest of the suite runs from the checkout (an editable install, and pytest puts the checkout first on the path),
so a module left out of the wheel, or ``patches`` installed as a top-level package, would pass every other test.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")  # a copy: building writes build/ and *.egg-info next to the sources
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src)
    for name in ("hf_masked_softmax", "patches"):
        shutil.copytree(os.path.join(ROOT, name), src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    # the environment's own setuptools where it has one (offline); else pip fetches pyproject's build requirements
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(out), str(src)],
                   check=True)
    (path,) = out.glob("hf_masked_softmax-*.whl")
    return path


def _sources(folder):
    return sorted(n for n in os.listdir(os.path.join(ROOT, folder)) if n.endswith(".py"))


def test_wheel_holds_every_module_under_the_package_and_no_top_level_patches(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    code = sorted(n for n in names if ".dist-info/" not in n)
    expected = sorted([f"hf_masked_softmax/{n}" for n in _sources("hf_masked_softmax")]
                      + [f"hf_masked_softmax/patches/{n}" for n in _sources("patches")]
                      + ["hf_masked_softmax/py.typed"])
    assert code == expected
    top = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top).decode().split() == ["hf_masked_softmax"]


def test_installed_wheel_imports_and_patches_from_its_own_files(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target",
                    str(target), str(wheel)], check=True)
    probe = (
        "import importlib.util, os, sys\n"
        "import hf_masked_softmax as hms, hf_masked_softmax.patches as p\n"
        "from transformers import GPT2Config, GPT2LMHeadModel\n"
        "for f in (hms.__file__, p.__file__):\n"
        "    assert f.startswith(sys.argv[1]), f\n"
        "assert importlib.util.find_spec('patches') is None\n"
        "m = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=32, n_positions=16))\n"
        "hms.patch_model(m)\n"
        "hms.unpatch_model(m)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", probe, str(target)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
