"""Task suites for circuit analysis: seeded clean/corrupt prompt pairs with a per-pair metric."""

from __future__ import annotations

from saebench.tasks.base import Task, TaskBatch, TaskUnavailable
from saebench.tasks.docstring import Docstring
from saebench.tasks.greater_than import GreaterThan
from saebench.tasks.induction import Induction
from saebench.tasks.ioi import IOI
from saebench.tasks.sva import SVA
from store.errors import UserError

TASKS: dict[str, Task] = {
    "ioi": IOI(),
    "sva": SVA(),
    "docstring": Docstring(),
    "induction": Induction(),
    "greater_than": GreaterThan(),
}


def get_task(name: str) -> Task:
    """The task called `name`; a one-line UserError naming the known tasks otherwise."""
    if name not in TASKS:
        raise UserError(f"unknown task '{name}'; choose from {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "Task", "TaskBatch", "TaskUnavailable", "get_task"]
