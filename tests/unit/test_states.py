"""The spawn state machine: legal moves pass, everything else is refused."""

import pytest

from vx11.core.errors import IllegalTransition
from vx11.core.states import ALLOWED_SOURCES, TERMINAL_STATES, SpawnStatus, check_transition

S = SpawnStatus


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.QUEUED, S.RUNNING),
        (S.RUNNING, S.DONE),
        (S.RUNNING, S.FAILED),
        (S.RUNNING, S.TIMEOUT),
        (S.RUNNING, S.CANCELLED),
        (S.RUNNING, S.ERROR),
        (S.QUEUED, S.CANCELLED),
        (S.QUEUED, S.ERROR),
        (S.RUNNING, S.QUEUED),  # a retry after the worker was lost
    ],
)
def test_the_lifecycle_moves_are_allowed(current, target):
    check_transition(current, target)


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATES))
@pytest.mark.parametrize("target", list(S))
def test_a_terminal_state_never_changes(terminal, target):
    with pytest.raises(IllegalTransition):
        check_transition(terminal, target)


def test_a_queued_spawn_cannot_finish_without_running():
    for target in (S.DONE, S.FAILED, S.TIMEOUT):
        with pytest.raises(IllegalTransition):
            check_transition(S.QUEUED, target)


def test_running_cannot_be_entered_twice():
    with pytest.raises(IllegalTransition):
        check_transition(S.RUNNING, S.RUNNING)


def test_terminal_states_are_exactly_the_five_endings():
    assert {s.value for s in TERMINAL_STATES} == {"DONE", "FAILED", "TIMEOUT", "CANCELLED", "ERROR"}
    assert not S.QUEUED.is_terminal and not S.RUNNING.is_terminal
    assert all(s.is_terminal for s in TERMINAL_STATES)


def test_every_state_has_a_rule():
    assert set(ALLOWED_SOURCES) == set(S)
