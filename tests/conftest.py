"""Test-suite set-up: 8 simulated CPU devices, so sharding tests can build real meshes.

The flag must be set before jax initialises its backend; conftest is imported first.
Single-device tests are unaffected (jit places work on device 0).
"""

import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
