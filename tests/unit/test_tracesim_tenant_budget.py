"""`slurmless simulate --tenant-budgets`: the launcher's per-tenant controllers, replayed."""

from __future__ import annotations

import pytest

from tracesim.frontier import slice_days
from tracesim.run import TRACES_DIR, SimConfig
from tracesim.tenant_budget import SITE, parse_tenant_budgets, run_tenant_budgets
from tracesim.trace import TraceError, load_trace_dir


def test_budgets_are_parsed_with_their_clients() -> None:
    got = parse_tenant_budgets("chem=40@0-3+7, bio=2.5@4")
    assert [(b.tenant, b.gpu_h_per_day, sorted(b.clients)) for b in got] == [
        ("chem", 40.0, ["0", "1", "2", "3", "7"]),
        ("bio", 2.5, ["4"]),
    ]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("chem=40", "NAME=GPU_HOURS_PER_DAY@IDS"),
        ("chem=0@1", "above 0"),
        ("chem=-1@1", "NAME=GPU_HOURS_PER_DAY@IDS"),
        ("chem=1@1,bio=1@1", "two tenants"),
        ("chem=1@1,chem=2@2", "given twice"),
        ("chem=1@5-2", "range"),
        ("Chem=1@1", "NAME=GPU_HOURS_PER_DAY@IDS"),
    ],
)
def test_bad_budgets_are_one_line_errors(text: str, says: str) -> None:
    with pytest.raises(TraceError) as refused:
        parse_tenant_budgets(text)
    assert says in str(refused.value) and "\n" not in str(refused.value)


def test_each_budget_moves_its_own_rate() -> None:
    """Two days of four m-small clients: a tenant with a tiny budget makes idle dearer (its rate falls),
    the site's generous budget cheaper (its rate rises)."""
    traces = slice_days(
        [t for t in load_trace_dir(TRACES_DIR / "servegen-language/m-small") if t.name in {"0", "1", "2", "3"}], 3, 2
    )
    tenants = parse_tenant_budgets("lab=0.5@0+1")
    report, rates = run_tenant_budgets(traces, SimConfig(workers=1), tenants, 500.0, label="test")
    assert set(rates) == {"lab", SITE} and len(rates["lab"]) == 48
    assert rates["lab"][-1] < 0.03 < rates[SITE][-1]
    assert set(report.summaries) == {"slurmless lab 0.5 GPU-h/day", "slurmless _site 500 GPU-h/day"}
