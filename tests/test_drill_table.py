"""The drill's summary says what each figure measures, from when to when (issue 13: a bare
"fail-back p50" next to "minimum stay" read as a contradiction)."""

from __future__ import annotations

from geofleet.drill import DrillResult, summary_table


def test_every_figure_names_its_start_and_end() -> None:
    result = DrillResult("eu-west-1", "kill", 9, 3, homes={"us-east-1": 6, "eu-west-1": 3})
    result.failover_s, result.failback_s = [1.0, 2.0, 3.0], [5.0, 6.0, 7.0]
    text = summary_table(result)
    assert "failover: eu-west-1 killed -> first message acknowledged in another region" in text
    assert "fail-back: eu-west-1 ready again -> first message acknowledged at home" in text
    assert "counted from its failover" in text
    assert "received by the application" in text
