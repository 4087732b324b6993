"""Schedules: which tasks take part in each optimizer step."""

from __future__ import annotations

import pytest

from gradlab.schedules import Joint, RoundRobin, Sequential, get_schedule


def test_round_robin_cycles_through_the_tasks():
    rr = get_schedule("round_robin", 3, 7)
    assert isinstance(rr, RoundRobin) and not rr.is_joint
    assert [rr.active_tasks(s) for s in range(7)] == [[0], [1], [2], [0], [1], [2], [0]]


def test_joint_takes_every_task_every_step():
    assert Joint(3, 5).active_tasks(4) == [0, 1, 2] and Joint(3, 5).is_joint


def test_sequential_splits_the_steps_evenly_extra_steps_first():
    seq = Sequential(3, 7)
    assert [seq.active_tasks(s)[0] for s in range(7)] == [0, 0, 0, 1, 1, 2, 2]
    assert [Sequential(2, 4).active_tasks(s)[0] for s in range(4)] == [0, 0, 1, 1]


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ValueError, match=r"schedule='x' is not one of \['joint', 'round_robin', "
                                         r"'sequential'\]"):
        get_schedule("x", 3, 5)
