"""The benchmark's table: each figure, VX11 against its baseline, and its goal."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One row: VX11's value, the baseline's, and how they compare.

    ``kind`` is ``ratio`` (VX11 / baseline, goal is a minimum), ``slowdown`` (VX11 /
    baseline, goal is a maximum) or ``difference`` (VX11 - baseline, goal is a maximum).
    A figure without a goal is informative; ``goal_note`` is said after the goal (what
    else the goal asks that the table cannot check).
    """

    name: str
    unit: str
    vx11: float
    baseline: float
    kind: str
    goal: float | None = None
    goal_note: str | None = None

    @property
    def compared(self) -> float:
        if self.kind in ("ratio", "slowdown"):
            return self.vx11 / self.baseline if self.baseline else float("nan")
        return self.vx11 - self.baseline

    @property
    def met(self) -> bool | None:
        if self.goal is None:
            return None
        if self.kind == "ratio":
            return self.compared >= self.goal
        return self.compared <= self.goal  # slowdown or difference: at most

    def cells(self) -> list[str]:
        if self.kind in ("ratio", "slowdown"):
            compared = f"{self.compared:.2f}"
            sign = ">=" if self.kind == "ratio" else "<="
            goal = f"{sign} {self.goal:.2f}" if self.goal is not None else "-"
        else:
            compared = f"{self.compared:+.1f} {self.unit}"
            goal = f"<= {self.goal:g} {self.unit}" if self.goal is not None else "-"
        if self.goal_note:
            goal = f"{goal}, {self.goal_note}"
        met = {True: "yes", False: "NO", None: "-"}[self.met]
        return [
            self.name,
            f"{_number(self.vx11)} {self.unit}",
            f"{_number(self.baseline)} {self.unit}",
            compared,
            goal,
            met,
        ]


HEADER = ["figure", "VX11", "baseline", "ratio / difference", "goal", "met?"]


def _number(value: float) -> str:
    return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


def text_table(figures: list[Figure]) -> str:
    rows = [HEADER, *(figure.cells() for figure in figures)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(figures: list[Figure]) -> str:
    rows = [HEADER, ["---"] * len(HEADER), *(figure.cells() for figure in figures)]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)
