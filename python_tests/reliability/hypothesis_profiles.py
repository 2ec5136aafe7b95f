"""Hypothesis settings for the property-based tests (test_properties_*.py), imported by each of them before any test
is decorated, so that every ``@given`` test runs under the chosen profile.

Profiles, chosen by ``MIMO_EXT_HYPOTHESIS_PROFILE`` (default "ci"):

- ``ci``: ``CI_EXAMPLES`` examples per property, derandomized (the examples are a function of the test alone, so
  two runs try the same inputs and a failure reproduces), no example database (nothing is written to disk).
- ``nightly``: ``NIGHTLY_EXAMPLES`` examples per property, randomized (each run explores new inputs), no
  database; a failure prints its ``@reproduce_failure`` blob.

No deadline in either: run time on a shared 2-core machine is not a property of the code.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

CI_EXAMPLES = 50
NIGHTLY_EXAMPLES = 1000

_COMMON = dict(
    deadline=None,
    database=None,
    print_blob=True,
    # The strategies draw sizes and a seed, and the tensors come from a torch.Generator: large draws are expected.
    # The properties take conftest's `device` fixture: a device name, the same for every example of a test, so
    # hypothesis's warning about function-scoped fixtures (state not reset between examples) does not apply.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
settings.register_profile("ci", max_examples=CI_EXAMPLES, derandomize=True, **_COMMON)
settings.register_profile("nightly", max_examples=NIGHTLY_EXAMPLES, derandomize=False, **_COMMON)

PROFILE = os.environ.get("MIMO_EXT_HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "nightly"):
    raise pytest.UsageError(f"MIMO_EXT_HYPOTHESIS_PROFILE must be 'ci' or 'nightly', got {PROFILE!r}")
settings.load_profile(PROFILE)


def examples(fraction: float = 1.0) -> settings:
    """Settings for a property whose examples cost more than most: ``fraction`` of the profile's count."""
    return settings(max_examples=max(1, round(settings.default.max_examples * fraction)))
