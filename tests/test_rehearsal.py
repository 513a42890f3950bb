"""The first AWS run, rehearsed: docs/AWS.md's runbook against moto's server with IAM enforced, the local
Airflow stack running fruits_features_emr with deferred sensors, the steps in Spark (tests/aws_rehearsal.py).
``make rehearse-aws`` runs the same rehearsal on its own; ``REHEARSAL_MUTATION`` shows what makes it fail."""

from __future__ import annotations

import pytest

from tests.aws_rehearsal import Rehearsal

pytestmark = pytest.mark.slow


def test_the_first_run_as_the_runbook_says(tmp_path, random_weights, spark):
    result = Rehearsal(tmp_path, random_weights).run()

    assert set(result["clusters"].values()) == {"TERMINATED"}
    assert [code for _, code in result["steps"]] == [0] * len(result["steps"])
    assert any(uri.endswith("report.html") for uri in result["outputs"])
    assert result["asset_events"]
    assert "resolve_run FAILED" in result["alert"]
    print(f"rehearsal durations (s): {result['durations']}")
