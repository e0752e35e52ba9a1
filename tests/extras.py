"""Optional dependencies (the package's extras) in the tests: skipped where absent, required where CI runs."""

import importlib
import importlib.util
import os

import pytest

# `make test` (CI) installs every extra and sets this: a missing one is then a failure, never a silent skip.
REQUIRE_EXTRAS = os.environ.get("R2VPO_REQUIRE_EXTRAS", "") not in ("", "0")


def require(module: str, extra: str):
    """Import ``module`` (which the ``extra`` extra installs), or skip; fail instead under ``R2VPO_REQUIRE_EXTRAS``."""
    if importlib.util.find_spec(module) is None:
        message = f'{module!r} is not installed: pip install -e ".[{extra}]"'
        if REQUIRE_EXTRAS:
            pytest.fail(f"{message} (R2VPO_REQUIRE_EXTRAS is set: CI installs every extra)")
        pytest.skip(message)
    return importlib.import_module(module)
