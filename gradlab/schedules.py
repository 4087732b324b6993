"""Schedules: which tasks take part in each optimizer step.

A schedule never sees gradients; the training loop asks it for the active tasks of a step and the
engine and method do the rest. Round-robin is a schedule, not a method: with one active task
every method reduces to that task's gradient.
"""

from __future__ import annotations


class Schedule:
    """Maps an optimizer step to the indices of the tasks that take part in it."""

    name = "schedule"

    def __init__(self, num_tasks: int, steps: int) -> None:
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.num_tasks = num_tasks
        self.steps = steps

    def active_tasks(self, step: int) -> list[int]:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def is_joint(self) -> bool:
        """True when every step sees every task (so a training Gramian exists each step)."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_tasks={self.num_tasks}, steps={self.steps})"


class Joint(Schedule):
    """Every task in every step; the method combines their gradients."""

    name = "joint"

    def active_tasks(self, step: int) -> list[int]:
        return list(range(self.num_tasks))

    @property
    def is_joint(self) -> bool:
        return True


class RoundRobin(Schedule):
    """One task per step, cycling in task order (SST -> PARA -> STS -> SST ...)."""

    name = "round_robin"

    def active_tasks(self, step: int) -> list[int]:
        return [step % self.num_tasks]


class Sequential(Schedule):
    """One task at a time for a contiguous share of the steps: all of task 0, then task 1 ...
    The steps are split evenly (the first ``steps % T`` tasks get one extra step)."""

    name = "sequential"

    def __init__(self, num_tasks: int, steps: int):
        super().__init__(num_tasks, steps)
        base, extra = divmod(steps, num_tasks)
        shares = [base + (i < extra) for i in range(num_tasks)]
        self.boundaries = [sum(shares[: i + 1]) for i in range(num_tasks)]

    def active_tasks(self, step: int) -> list[int]:
        for task, end in enumerate(self.boundaries):
            if step < end:
                return [task]
        return [self.num_tasks - 1]


SCHEDULES: dict[str, type[Schedule]] = {
    "joint": Joint,
    "round_robin": RoundRobin,
    "sequential": Sequential,
}


def get_schedule(name: str, num_tasks: int, steps: int) -> Schedule:
    """The schedule called ``name`` (one of ``SCHEDULES``)."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule={name!r} is not one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](num_tasks, steps)


__all__ = ["SCHEDULES", "Joint", "RoundRobin", "Schedule", "Sequential", "get_schedule"]
