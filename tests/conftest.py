import os

# Tests run on CPU; 8 fake devices let the sharding tests build a mesh without accelerators.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tiny_config():
    from experiments.calvin import get_config
    return get_config("tiny")
