"""The first AWS run, rehearsed: docs/AWS.md's runbook against moto's server with IAM enforced, the local
Airflow stack running fruits_features_emr with deferred sensors, the steps in Spark (tests/aws_rehearsal.py).
``make rehearse-aws`` runs the same rehearsal on its own; ``REHEARSAL_MUTATION`` shows what makes it fail."""

from __future__ import annotations

import re

import pytest

from tests.aws_rehearsal import SETUP_STEPS, Rehearsal, command_lines


def test_the_runbook_is_extracted_whole_and_every_placeholder_substituted(tmp_path):
    """Fast: a runbook step, a placeholder or a mutation the rehearsal would miss fails here, not after
    minutes of the slow test."""
    rehearsal = Rehearsal(tmp_path, tmp_path / "weights.h5")
    steps = rehearsal.runbook()
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    script = rehearsal.script(steps, (*SETUP_STEPS, 5, 6), tmp_path / "images", tmp_path / "env.json")
    commands = [line for line in command_lines(script) if not line.lstrip().startswith("echo")]
    assert not [c for c in commands if re.search(r"<[a-z-]+>", c)], "a placeholder the rehearsal misses"
    assert rehearsal.trigger_conf(steps[5])["input"] == "initial/"

    order = [line.split("=")[0] for line in command_lines(steps[4]) if line.startswith("export ")]
    assert order[-1] == "export AWS_PROFILE"  # the Variables are read with the administrator's credentials
    mutated = Rehearsal(tmp_path, tmp_path / "weights.h5", mutation="runbook").runbook()
    assert next(line for line in command_lines(mutated[4]) if line.startswith("export ")).startswith(
        "export AWS_PROFILE="
    )
    template = Rehearsal(tmp_path, tmp_path / "weights.h5", mutation="policy").template.read_text()
    assert "AddJobFlowSteps" not in template


@pytest.mark.slow
def test_the_first_run_as_the_runbook_says(tmp_path, random_weights, spark):
    result = Rehearsal(tmp_path, random_weights).run()

    assert set(result["clusters"].values()) == {"TERMINATED"}
    assert [code for _, code in result["steps"]] == [0] * len(result["steps"])
    assert any(key.endswith("report.html") for key in result["outputs"])
    assert result["asset_events"]
    assert "resolve_run FAILED" in result["alert"]
    print(f"rehearsal durations (s): {result['durations']}")
