"""The tests on the real data beside the repo are required in CI and skipped, with their reason, elsewhere."""

from __future__ import annotations

import pytest
from _pytest.outcomes import Failed, Skipped
from conftest import data_required, missing_data


@pytest.mark.parametrize("env, required", [({}, False), ({"CI": "true"}, True), ({"CI": "false"}, False),
                                           ({"LEUKVIZ_REQUIRE_DATA": "1"}, True)])
def test_missing_data_fails_in_ci_and_skips_with_its_reason_elsewhere(monkeypatch, env, required):
    for name in ("CI", "LEUKVIZ_REQUIRE_DATA"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert data_required() is required
    with pytest.raises(Failed if required else Skipped, match="../shared/data"):
        missing_data("real C-NMC sample not found at X (it lives in ../shared/data beside the repo)")
