"""qdot_general and the interceptor on 8 virtual CPU devices (data + tensor parallel) match one device."""

import os
import pathlib
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_sharded_matches_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    script = pathlib.Path(__file__).with_name("sharding_check.py")
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stdout + out.stderr
