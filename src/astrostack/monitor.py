"""Wait for a cluster to be ready: the one wait loop of astrostack.

A deployment is ready after three phases, in order:

``stack``
    every Heat resource but the wait conditions is done (servers ACTIVE, ...);
``hosts``
    every host signalled its wait condition and the stack is CREATE_COMPLETE;
``nodes``
    every MPI rank is running and the smoke test passed.

A :class:`Probe` looks at the cloud once per poll and returns an
:class:`Observation`. :func:`wait_until_ready` polls it with tenacity until the
phase is complete, a terminal state is seen (raised at once as
:class:`PhaseFailed`) or a deadline passes (:class:`PhaseTimeout`). Time is
injected (``clock`` and ``sleep``) so the loop is tested without sleeping.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Protocol, Union

from tenacity import RetryCallState, Retrying, retry_if_result
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from astrostack.errors import AstrostackError, CloudError, WaitTimeout

STACK = "stack"
HOSTS = "hosts"
NODES = "nodes"
PHASES = (STACK, HOSTS, NODES)

# Which spec field to raise when a phase runs out of time.
_TIMEOUT_FIELDS = {
    STACK: "timeouts.stack_create",
    HOSTS: "timeouts.hosts_ready",
    NODES: "timeouts.nodes_ready",
}
# Float noise below this is "at the deadline" (avoids a last sub-millisecond poll).
_DEADLINE_SLACK_S = 1e-3


# Data -----------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """What one poll saw. ``None`` means "not looked at in this poll".

    ``resources_total`` counts the Heat resources of the stack phase: every
    resource (nested ones included) except the wait conditions, which only
    complete when hosts signal. ``hosts_missing`` names the hosts that sent no
    signal yet (when the probe knows the hosts' ids).
    """

    stack_status: Optional[str] = None
    stack_reason: str = ""
    resources_done: int = 0
    resources_total: int = 0
    hosts_signalled: int = 0
    hosts_missing: list[str] = field(default_factory=list)
    host_failures: list[tuple[str, str]] = field(default_factory=list)
    failed_resources: list[tuple[str, str]] = field(default_factory=list)
    servers_in_error: list[tuple[str, str]] = field(default_factory=list)
    nodes_ready: int = 0
    nodes_failure: Optional[str] = None
    smoke_ok: Optional[bool] = None
    last_event: Optional[str] = None
    requests: int = 0

    def progress_key(self) -> tuple[Any, ...]:
        """The values whose change counts as progress (and resets the poll interval)."""
        return (
            self.stack_status,
            self.resources_done,
            self.resources_total,
            self.hosts_signalled,
            self.nodes_ready,
            self.smoke_ok,
        )


class Probe(Protocol):
    """Looks at the cloud and the cluster once.

    ``observe`` must return in bounded time (HTTP and SSH calls with their own
    timeouts, transient errors retried through :mod:`astrostack.retry`): the
    monitor's deadlines are checked between polls. ``time_left`` is how long
    the phase may still take; a long check (the smoke test) fits in it.
    """

    def observe(self, phase: str, *, time_left: Optional[float] = None) -> Observation: ...


@dataclass(frozen=True)
class Targets:
    """What "ready" means: hosts signalled, nodes running, the stack's goal status."""

    hosts: int
    nodes: int
    stack_status: str = "CREATE_COMPLETE"

    @property
    def stack_action(self) -> str:
        """The Heat action under way, e.g. CREATE for CREATE_COMPLETE."""
        return self.stack_status.rsplit("_", 1)[0]


@dataclass(frozen=True)
class Deadlines:
    """Seconds allowed per phase, and for the whole wait."""

    stack: float
    hosts: float
    nodes: float
    total: float

    @classmethod
    def from_spec(cls, spec: Any) -> Deadlines:
        timeouts = spec.timeouts
        return cls(
            stack=timeouts.stack_create,
            hosts=timeouts.hosts_ready,
            nodes=timeouts.nodes_ready,
            total=timeouts.stack_create + timeouts.hosts_ready + timeouts.nodes_ready,
        )

    def for_phase(self, phase: str) -> float:
        return {STACK: self.stack, HOSTS: self.hosts, NODES: self.nodes}[phase]


@dataclass(frozen=True)
class PollPolicy:
    """Adaptive poll interval: ``minimum`` after a change, ×``factor`` while idle, up to ``maximum``."""

    minimum: float = 1.0
    factor: float = 1.5
    maximum: float = 3.0

    def __post_init__(self) -> None:
        if not (0 < self.minimum <= self.maximum and self.factor >= 1):
            raise ValueError(f"bad poll policy {self}: need 0 < minimum <= maximum and factor >= 1")


@dataclass
class PhaseTiming:
    """One phase's times (seconds since the wait started) and its cost."""

    phase: str
    started: float
    finished: Optional[float] = None
    polls: int = 0
    requests: int = 0
    outcome: Optional[str] = None  # "done" | "failed" | "timeout" | "error" (probe raised)

    @property
    def duration(self) -> Optional[float]:
        return None if self.finished is None else self.finished - self.started


@dataclass
class Readiness:
    """The record of a successful wait."""

    phases: dict[str, PhaseTiming]
    observation: Observation
    elapsed: float

    @property
    def polls(self) -> int:
        return sum(timing.polls for timing in self.phases.values())

    @property
    def requests(self) -> int:
        return sum(timing.requests for timing in self.phases.values())

    @property
    def requests_per_poll(self) -> float:
        return self.requests / self.polls if self.polls else 0.0


@dataclass(frozen=True)
class PhaseEvent:
    """A phase started, progressed, finished, failed or timed out."""

    phase: str
    kind: str  # "start" | "progress" | "done" | "failed" | "timeout"
    elapsed: float
    phase_elapsed: float
    resources_done: int
    resources_total: int
    hosts_signalled: int
    hosts_target: int
    nodes_ready: int
    nodes_target: int
    stack_status: Optional[str]
    message: str
    last_event: Optional[str] = None

    def as_json(self) -> dict[str, Any]:
        """A flat dict for ``--json`` output (one object per line)."""
        return {
            "event": self.kind,
            "phase": self.phase,
            "elapsed": round(self.elapsed, 3),
            "phase_elapsed": round(self.phase_elapsed, 3),
            "resources": {"done": self.resources_done, "total": self.resources_total},
            "hosts": {"signalled": self.hosts_signalled, "target": self.hosts_target},
            "nodes": {"ready": self.nodes_ready, "target": self.nodes_target},
            "stack_status": self.stack_status,
            "message": self.message,
            "last_event": self.last_event,
        }


# Errors ---------------------------------------------------------------------


class MonitorError(AstrostackError):
    """A wait ended without a ready cluster; ``phase`` and ``observation`` say where."""

    def __init__(self, message: str, *, phase: str, observation: Observation,
                 phases: Optional[dict[str, PhaseTiming]] = None, hint: Optional[str] = None):
        super().__init__(message, hint=hint)
        self.phase = phase
        self.observation = observation
        self.phases = phases or {}


class PhaseFailed(MonitorError):
    """A terminal state was seen: failure signal, failed stack or resource, server in ERROR."""


class PhaseTimeout(MonitorError, WaitTimeout):
    """A phase (or the whole wait) reached its deadline."""


# Phase logic ----------------------------------------------------------------


def phase_complete(phase: str, observation: Observation, targets: Targets) -> bool:
    """Whether ``observation`` shows ``phase`` finished."""
    if phase == STACK:
        resources_done = 0 < observation.resources_total <= observation.resources_done
        return resources_done or observation.stack_status == targets.stack_status
    if phase == HOSTS:
        return (observation.hosts_signalled >= targets.hosts
                and observation.stack_status == targets.stack_status)
    if phase == NODES:
        return observation.nodes_ready >= targets.nodes and observation.smoke_ok is True
    raise ValueError(f"unknown phase {phase!r}; phases are {', '.join(PHASES)}")


def stack_is_terminal(status: Optional[str], targets: Targets) -> bool:
    """Any status but the goal or the goal's action IN_PROGRESS is terminal.

    A Heat rollback passes through CREATE_FAILED in well under a second, so
    waiting for one failure status would miss it: ROLLBACK_IN_PROGRESS,
    DELETE_* and every *_FAILED / *_COMPLETE that is not the goal all end the wait.
    """
    if status is None:
        return False
    return status not in (targets.stack_status, f"{targets.stack_action}_IN_PROGRESS")


def failure_reasons(observation: Observation, targets: Targets, phase: Optional[str] = None) -> list[str]:
    """Every terminal problem in ``observation``, the most specific first.

    In the hosts phase, the hosts that never signalled are one more reason
    (when none signalled FAILURE): Heat's own wait-condition timeout only counts them.
    """
    reasons = [f"host {host} failed: {why}" for host, why in observation.host_failures]
    reasons += [f"server {name} is in ERROR: {why}" for name, why in observation.servers_in_error]
    if not reasons and not observation.nodes_failure:
        reasons += _silent_hosts(phase, observation, targets)
    reasons += [f"resource {name} failed: {why}" for name, why in observation.failed_resources]
    if observation.nodes_failure:
        reasons.append(f"node failure: {observation.nodes_failure}")
    if stack_is_terminal(observation.stack_status, targets):
        reasons.append(f"stack is {observation.stack_status}: {observation.stack_reason or 'no reason given'}")
    return reasons


def _silent_hosts(phase: Optional[str], observation: Observation, targets: Targets) -> list[str]:
    """'no signal from HOSTS', only alongside another problem of the hosts phase."""
    problem = observation.failed_resources or stack_is_terminal(observation.stack_status, targets)
    if phase != HOSTS or not observation.hosts_missing or not problem:
        return []
    return [f"no signal from {_some(observation.hosts_missing)}"]


def _some(names: list[str], shown: int = 5) -> str:
    """The first ``shown`` names, and how many more."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def describe_counts(phase: str, observation: Observation, targets: Targets) -> str:
    """Counts reached vs. targets for ``phase``, for messages."""
    status = f"stack {observation.stack_status or 'not seen'}"
    if phase == STACK:
        return f"{observation.resources_done}/{observation.resources_total} Heat resources done, {status}"
    if phase == HOSTS:
        missing = f" (none from {_some(observation.hosts_missing)})" if observation.hosts_missing else ""
        return f"{observation.hosts_signalled}/{targets.hosts} hosts signalled{missing}, {status}"
    smoke = {True: "passed", False: "failed", None: "not run"}[observation.smoke_ok]
    return f"{observation.nodes_ready}/{targets.nodes} nodes ready, smoke test {smoke}"


# tenacity policies on the injected clock --------------------------------------


class stop_at_deadline(stop_base):
    """Stop once ``clock()`` reaches ``deadline``.

    tenacity's ``stop_after_delay`` / ``stop_before_delay`` time attempts with
    ``time.monotonic`` directly, not with an injected clock; this is
    ``stop_after_delay`` measured on ours. With :class:`AdaptiveWait` never
    sleeping past the deadline, the last poll happens at the deadline itself.
    """

    def __init__(self, clock: Callable[[], float], deadline: float):
        self.clock = clock
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.clock() >= self.deadline - _DEADLINE_SLACK_S


class AdaptiveWait(wait_base):
    """Poll quickly while counts change, back off while idle, never past the deadline."""

    def __init__(self, policy: PollPolicy, clock: Callable[[], float], deadline: float):
        self.policy = policy
        self.clock = clock
        self.deadline = deadline
        self.interval = policy.minimum
        self.intervals: list[float] = []  # every interval chosen, for tests and benchmarks
        self._last_key: Optional[tuple[Any, ...]] = None

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        key = None if outcome is None or outcome.failed else outcome.result().progress_key()
        self.interval = self._next_interval(key)
        self.intervals.append(self.interval)
        remaining = self.deadline - self.clock()
        return max(0.0, min(self.interval, remaining))

    def _next_interval(self, key: Optional[tuple[Any, ...]]) -> float:
        changed = key != self._last_key or not self.intervals
        self._last_key = key
        if changed:
            return self.policy.minimum
        return min(self.interval * self.policy.factor, self.policy.maximum)


# The wait loop --------------------------------------------------------------


EventCallback = Callable[[PhaseEvent], None]


def wait_until_ready(
    probe: Probe,
    targets: Targets,
    deadlines: Deadlines,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_event: Optional[EventCallback] = None,
    poll: PollPolicy = PollPolicy(),
    phases: Sequence[str] = PHASES,
) -> Readiness:
    """Poll ``probe`` through the stack, hosts and nodes phases (or the given ones, in that order).

    Returns a :class:`Readiness` record; raises :class:`PhaseFailed` as soon as
    a terminal state is seen and :class:`PhaseTimeout` when a phase's deadline
    or the total deadline passes (checked to within one poll).
    """
    waiter = _Waiter(probe, targets, deadlines, clock, sleep, on_event, poll)
    for phase in phases:
        waiter.run_phase(phase)
    return Readiness(phases=waiter.timings, observation=waiter.observation, elapsed=waiter.elapsed())


class _Waiter:
    """The state shared by the phases of one :func:`wait_until_ready` call."""

    def __init__(self, probe: Probe, targets: Targets, deadlines: Deadlines,
                 clock: Callable[[], float], sleep: Callable[[float], None],
                 on_event: Optional[EventCallback], poll: PollPolicy):
        self.probe = probe
        self.targets = targets
        self.deadlines = deadlines
        self.clock = clock
        self.sleep = sleep
        self.on_event = on_event
        self.poll = poll
        self.started = clock()
        self.timings: dict[str, PhaseTiming] = {}
        self.observation = Observation()
        self._last_key: Optional[tuple[Any, ...]] = None
        self.outage: Optional[tuple[float, CloudError]] = None  # (since, last error) while the API is silent

    def elapsed(self) -> float:
        return self.clock() - self.started

    def run_phase(self, phase: str) -> None:
        timing = PhaseTiming(phase, started=self.elapsed())
        self.timings[phase] = timing
        deadline, deadline_kind = self._deadline(phase)
        self._emit(phase, "start", f"waiting up to {deadline - self.clock():.0f} s for {phase}")
        retrying = Retrying(
            sleep=self.sleep,
            stop=stop_at_deadline(self.clock, deadline),
            wait=AdaptiveWait(self.poll, self.clock, deadline),
            retry=retry_if_result(lambda observation: not phase_complete(phase, observation, self.targets)),
            retry_error_callback=lambda _state: self._timed_out(phase, deadline_kind),
        )
        retrying(self._poll, phase, deadline)
        self._finish(phase, "done")
        self._emit(phase, "done", f"{phase} ready: {describe_counts(phase, self.observation, self.targets)}")

    def _deadline(self, phase: str) -> tuple[float, str]:
        """The earlier of the phase's and the whole wait's deadline, and which one it is."""
        phase_deadline = self.clock() + self.deadlines.for_phase(phase)
        total_deadline = self.started + self.deadlines.total
        if total_deadline < phase_deadline:
            return total_deadline, "total"
        return phase_deadline, "phase"

    def _poll(self, phase: str, deadline: float) -> Observation:
        try:
            observation = self.probe.observe(phase, time_left=max(0.0, deadline - self.clock()))
        except CloudError as exc:
            if exc.transient:  # the probe already retried this call: ride the outage out to the deadline
                return self._unobserved(phase, exc)
            self._fail(phase, [f"cannot observe the cloud: {exc}"])
        except AstrostackError as exc:
            self._fail(phase, [f"cannot observe the cluster: {exc}"])
        self._outage_over(phase)
        timing = self.timings[phase]
        timing.polls += 1
        timing.requests += observation.requests
        self.observation = observation
        if observation.progress_key() != self._last_key:
            self._last_key = observation.progress_key()
            message = observation.last_event or describe_counts(phase, observation, self.targets)
            self._emit(phase, "progress", message)
        reasons = failure_reasons(observation, self.targets, phase)
        if reasons:
            self._fail(phase, reasons)
        return observation

    def _unobserved(self, phase: str, error: CloudError) -> Observation:
        """An outage: keep the last observation, say so, and poll again (backing off)."""
        since = self.outage[0] if self.outage else self.elapsed()
        self.outage = (since, error)
        self.timings[phase].polls += 1
        self._emit(phase, "progress", f"the cloud does not answer for {self.elapsed() - since:.0f} s "
                                      f"({error.message}); retrying until the {phase} phase's deadline")
        return self.observation

    def _outage_over(self, phase: str) -> None:
        if self.outage:
            self._emit(phase, "progress", f"the cloud answers again after {self.elapsed() - self.outage[0]:.0f} s")
            self.outage = None

    def _fail(self, phase: str, reasons: list[str]) -> None:
        more = f" (and {len(reasons) - 1} more: {'; '.join(reasons[1:])})" if len(reasons) > 1 else ""
        message = f"{phase} phase failed after {self._phase_elapsed(phase):.0f} s: {reasons[0]}{more}"
        self._finish(phase, "failed")
        self._emit(phase, "failed", message)
        raise PhaseFailed(message, phase=phase, observation=self.observation, phases=self.timings,
                          hint="the stack's events and the host's cloud-init log say more; "
                               "`on_failure: keep` keeps a failed cluster for debugging")

    def _timed_out(self, phase: str, deadline_kind: str) -> None:
        counts = describe_counts(phase, self.observation, self.targets)
        if self.outage:
            counts += (f"; the cloud has not answered for {self.elapsed() - self.outage[0]:.0f} s: "
                       f"{self.outage[1].message}")
        if deadline_kind == "total":
            message = f"{phase} phase stopped at the total deadline ({self.deadlines.total:.0f} s): {counts}"
            hint = "the phases' timeouts add up to the total deadline; raise the slow phase's timeout"
        else:
            limit = self.deadlines.for_phase(phase)
            message = f"{phase} phase timed out after {limit:.0f} s: {counts}"
            hint = f"raise {_TIMEOUT_FIELDS[phase]} in the spec if the cloud is just slow"
        self._finish(phase, "timeout")
        self._emit(phase, "timeout", message)
        raise PhaseTimeout(message, phase=phase, observation=self.observation, phases=self.timings, hint=hint)

    def _finish(self, phase: str, outcome: str) -> None:
        timing = self.timings[phase]
        timing.finished = self.elapsed()
        timing.outcome = outcome

    def _phase_elapsed(self, phase: str) -> float:
        return self.elapsed() - self.timings[phase].started

    def _emit(self, phase: str, kind: str, message: str) -> None:
        if self.on_event is None:
            return
        observation = self.observation
        self.on_event(PhaseEvent(
            phase=phase,
            kind=kind,
            elapsed=self.elapsed(),
            phase_elapsed=self._phase_elapsed(phase),
            resources_done=observation.resources_done,
            resources_total=observation.resources_total,
            hosts_signalled=observation.hosts_signalled,
            hosts_target=self.targets.hosts,
            nodes_ready=observation.nodes_ready,
            nodes_target=self.targets.nodes,
            stack_status=observation.stack_status,
            message=message,
            last_event=observation.last_event,
        ))


# Simulation: a clock and a probe that replay a timeline ------------------------
# Used by the unit tests, the monitor benchmark and dry runs; no cloud involved.


class SimulatedClock:
    """A monotonic clock that only moves when :meth:`sleep` (or :meth:`advance`) is called."""

    def __init__(self, start: float = 0.0):
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"negative sleep {seconds}")
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ScriptedProbe:
    """A :class:`Probe` that replays a timeline of changes against a clock.

    ``timeline`` is a list of ``(at_seconds, {field: value})``: from ``at``
    on, the observation has those fields (later steps override earlier ones).
    ``requests_per_poll`` is what each poll reports as its API cost, per phase
    or one number for all; ``poll_cost`` advances a :class:`SimulatedClock`
    by that many seconds per poll, as a real probe's HTTP calls take time.
    """

    def __init__(self, clock: Callable[[], float], timeline: Sequence[tuple[float, Mapping[str, Any]]],
                 requests_per_poll: Union[int, Mapping[str, int]] = 0, poll_cost: float = 0.0):
        self.clock = clock
        self.requests_per_poll = requests_per_poll
        self.poll_cost = poll_cost
        self.calls: list[tuple[float, str]] = []
        self._times, self._states = self._accumulate(sorted(timeline, key=lambda step: step[0]))

    def observe(self, phase: str, *, time_left: Optional[float] = None) -> Observation:
        now = self.clock()
        self.calls.append((now, phase))
        observation = self.state_at(now)
        if self.poll_cost and isinstance(self.clock, SimulatedClock):
            self.clock.advance(self.poll_cost)
        return replace(observation, requests=self._requests(phase))

    def state_at(self, now: float) -> Observation:
        """The observation the timeline gives at ``now``."""
        return self._states[bisect.bisect_right(self._times, now)]

    @staticmethod
    def _accumulate(timeline: Sequence[tuple[float, Mapping[str, Any]]]) -> tuple[list[float], list[Observation]]:
        """Step times, and the state before the first step then after each one."""
        times, states = [], [Observation()]
        for at, changes in timeline:
            times.append(at)
            states.append(replace(states[-1], **changes))
        return times, states

    def _requests(self, phase: str) -> int:
        if isinstance(self.requests_per_poll, int):
            return self.requests_per_poll
        return self.requests_per_poll.get(phase, 0)


__all__ = [
    "PHASES",
    "AdaptiveWait",
    "Deadlines",
    "MonitorError",
    "Observation",
    "PhaseEvent",
    "PhaseFailed",
    "PhaseTimeout",
    "PhaseTiming",
    "PollPolicy",
    "Probe",
    "Readiness",
    "ScriptedProbe",
    "SimulatedClock",
    "Targets",
    "failure_reasons",
    "phase_complete",
    "stack_is_terminal",
    "wait_until_ready",
]
