import pytest


@pytest.fixture(params=[True, False], ids=["fused", "unfused"])
def fused(request) -> bool:
    """Each equivalence test that takes it runs with the speed layer on and off."""
    return request.param
