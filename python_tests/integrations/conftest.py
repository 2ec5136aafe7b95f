from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def docs():
    """docs/integrations.md's namespace after its examples ran (they define the models the resume tests train)."""
    pytest.importorskip("lightning")
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from python_tests.integrations.docs_examples import run_all

    return run_all()
