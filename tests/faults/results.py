"""The fault suite's results table: one row per fault, printed by each test and again at the end."""

from __future__ import annotations

from dataclasses import dataclass

HEADER = ("fault", "expectation", "observed", "recovery s")


@dataclass(frozen=True, slots=True)
class Row:
    fault: str
    expectation: str
    observed: str
    recovery_s: float | None

    def cells(self) -> tuple[str, str, str, str]:
        recovery = "-" if self.recovery_s is None else f"{self.recovery_s:.1f}"
        return self.fault, self.expectation, self.observed, recovery


ROWS: list[Row] = []


def record(fault: str, expectation: str, observed: str, recovery_s: float | None) -> Row:
    """Keep a row for the closing table and print it at once (visible with `pytest -s`)."""
    row = Row(fault, expectation, observed, recovery_s)
    ROWS.append(row)
    print(f"\nFAULT | {' | '.join(row.cells())}", flush=True)
    return row


def markdown(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row.cells()) + " |" for row in rows]
    return "\n".join(lines)
