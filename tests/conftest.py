"""Test-wide settings.

``TRITON_INTERPRET=1`` must be set before any ``@triton.jit`` function is defined, so it is set
here, at conftest import, before the tests import ``textvision.kernels``. CI has no GPU: the
Triton kernels run on the CPU through Triton's interpreter.
"""

import os

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The vision-pretraining cache (textvision.pretrain.cache) of a test session: its own folder, so
# the tests exercise the first-use path and never read or fill the user's cache.
if "TEXTVISION_TEST_KEEP_CACHE" not in os.environ:
    import tempfile

    os.environ["TEXTVISION_CACHE"] = tempfile.mkdtemp(prefix="textvision-test-cache-")


@pytest.fixture
def print_config(capsys):
    """``print_config(*yaml_paths) -> dict``: the merged config the real CLI prints for ``fit``.

    ``--print_config`` parses and validates without building the model, so GPU recipes are
    checked without their weights.
    """
    import yaml

    from textvision.train.cli import cli_main

    def run(*configs) -> dict:
        args = ["fit"]
        for config in configs:
            args += ["-c", str(config)]
        with pytest.raises(SystemExit) as exit_info:
            cli_main([*args, "--print_config"])
        assert exit_info.value.code in (0, None)
        return yaml.safe_load(capsys.readouterr().out)

    return run
