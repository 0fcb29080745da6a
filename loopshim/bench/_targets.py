"""loopshim's performance targets (DESIGN.md, "Performance targets", and issue 13's
for calls from async code), each a ratio to something measured in the same run — a
peer, or the floor: the hand-written recipe that does the least a scope's call must do
on the same backend. Absolute times mean nothing on a shared 2-vCPU machine; ratios
within one interleaved run do, which makes ``--check`` usable as a gate there.

The per-backend figures and the recipe each backend is held to live here, and nowhere
else: :data:`FLOORS`; a re-entrant call is held to awaiting the function directly, and
``run_async`` to the recipe written by hand for the same pair of loops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from ._async_peers import FLOOR, by_hand_key
from ._format import LABELS, format_seconds, format_speedup
from ._hosts import HOSTS
from ._peers import BASELINE
from ._results import BenchResult, Cell

__all__ = ["FLOORS", "Floors", "Rule", "Target", "check_targets", "rules_for"]

#: The longest a fan-out of 100 concurrent 10 ms sleeps may take, in seconds.
FANOUT_LIMIT_S: Final = 0.020
#: A re-entrant call may cost REENTRANT_TIMES the time of awaiting the function
#: directly, plus REENTRANT_PLUS_S seconds.
REENTRANT_TIMES: Final = 2.0
REENTRANT_PLUS_S: Final = 5e-6


@dataclass(frozen=True)
class Floors:
    """What one built-in backend is measured against: the peer keys of its recipes."""

    #: How many times faster than Flask's default its ``thread`` scope must be.
    thread_speedup: float
    #: Its ``run`` function: what ``call`` scope must match.
    run: str
    #: anyio's blocking portal on it: what ``process`` scope must beat.
    portal: str
    #: A loop kept in its own thread by hand: the floor of ``process`` scope.
    loop_thread: str
    #: A loop kept per thread and driven by hand: the floor of ``thread`` scope (trio
    #: has no such recipe: a trio run cannot be resumed once it returns).
    loop_per_thread: str | None


FLOORS: Final[dict[str, Floors]] = {
    "asyncio": Floors(
        30, "asyncio.run", "anyio-portal-asyncio", "loop-thread-asyncio", "loop-per-thread-asyncio"
    ),
    "uvloop": Floors(
        30, "uvloop.run", "anyio-portal-uvloop", "loop-thread-uvloop", "loop-per-thread-uvloop"
    ),
    "trio": Floors(20, "trio.run", "anyio-portal-trio", "loop-thread-trio", None),
}

Kind = Literal["speed-up", "cost", "time"]
Status = Literal["pass", "fail", "not checked"]


@dataclass(frozen=True)
class Rule:
    """One target: *contender* on *workload*, compared with *reference* (a peer's key;
    None for a time limit)."""

    workload: str
    contender: str
    reference: str | None
    #: speed-up: reference's median / contender's median >= limit;
    #: cost: contender's median / reference's median <= limit (contender's median <=
    #: limit x reference's median + allowance_s, with an allowance);
    #: time: contender's median <= limit seconds.
    kind: Kind
    limit: float
    #: What the contender must do, with {ref} for the reference's label.
    claim: str
    #: For a cost: seconds the contender may take beyond limit x the reference's median.
    allowance_s: float = 0.0

    def ratio(self, cell: Cell, reference: Cell | None) -> float:
        """The figure this rule compares with its limit (see *kind*)."""
        if self.kind == "time":
            return cell.median_s
        assert reference is not None
        if self.kind == "speed-up":
            return reference.median_s / cell.median_s
        return cell.median_s / reference.median_s

    def bound_s(self, reference: Cell) -> float:
        """For a cost: the longest the contender's median may be, in seconds."""
        return self.limit * reference.median_s + self.allowance_s

    def met(self, cell: Cell, reference: Cell | None) -> bool:
        """Whether *cell* meets the rule (the limit itself counts as met)."""
        ratio = self.ratio(cell, reference)
        if self.kind == "speed-up":
            return ratio >= self.limit
        if self.kind == "cost" and self.allowance_s:
            assert reference is not None
            return cell.median_s <= self.bound_s(reference)
        return ratio <= self.limit


@dataclass(frozen=True)
class Target:
    """A rule checked on one run."""

    text: str
    workload: str
    contender: str
    reference: str | None
    kind: Kind
    limit: float
    #: The measured ratio (seconds for a time limit); None when not checked.
    ratio: float | None
    status: Status
    #: The ratio as shown, or why the target was not checked.
    measured: str
    #: For a cost: seconds allowed beyond limit x the reference's median.
    allowance_s: float = 0.0


# --- the rules --------------------------------------------------------------------

RuleMaker = Callable[[str, str, str | None], Rule]


def _faster(times: float) -> RuleMaker:
    claim = "faster than {ref}" if times == 1 else f"≥ {times:g}x faster than {{ref}}"
    return lambda workload, contender, ref: Rule(workload, contender, ref, "speed-up", times, claim)


def _at_most(times: float) -> RuleMaker:
    claim = "no slower than {ref}" if times == 1 else f"≤ {times:.2f}x the time of {{ref}}"
    return lambda workload, contender, ref: Rule(workload, contender, ref, "cost", times, claim)


def _within(share: float) -> RuleMaker:
    claim = f"within {share:.0%} of {{ref}}"
    return lambda workload, contender, ref: Rule(workload, contender, ref, "cost", 1 + share, claim)


def _shim(backend: str, scope: str) -> str:
    return f"loopshim-{backend}-{scope}"


def _per_call_rules(backend: str, floors: Floors) -> list[Rule]:
    thread, process, call = (_shim(backend, s) for s in ("thread", "process", "call"))
    rules = [_faster(floors.thread_speedup)("noop", thread, BASELINE)]
    if floors.loop_per_thread is not None:
        rules.append(_at_most(1.15)("noop", thread, floors.loop_per_thread))
    rules += [
        _faster(5)("noop", process, BASELINE),
        _faster(1)("noop", process, floors.portal),
        _at_most(1.10)("noop", process, floors.loop_thread),
        _within(0.10)("noop", call, floors.run),
    ]
    return rules


def _flask_rules(backend: str, floors: Floors) -> list[Rule]:
    """A Flask async view costs no more than with the recipe of the same scope as the
    app's ``async_to_sync``."""
    rules = [_at_most(1)("flask-async", _shim(backend, "process"), floors.loop_thread)]
    if floors.loop_per_thread is not None:
        rules.insert(
            0, _at_most(1)("flask-async", _shim(backend, "thread"), floors.loop_per_thread)
        )
    return rules


def _reentrant_rules(backend: str) -> list[Rule]:
    """A re-entrant call costs at most 2x awaiting the function directly, plus 5 µs."""
    claim = f"≤ {REENTRANT_TIMES:g}x the time of {{ref}} + {format_seconds(REENTRANT_PLUS_S)}"
    return [
        Rule(
            "reentrant",
            f"{_shim(backend, scope)}-reentrant",
            FLOOR,
            "cost",
            REENTRANT_TIMES,
            claim,
            REENTRANT_PLUS_S,
        )
        for scope in ("process", "thread", "call")
    ]


def _cross_loop_rules(backend: str) -> list[Rule]:
    """``run_async`` is no slower than the recipe written by hand for the same pair of
    loops."""
    return [
        _at_most(1)(
            "cross-loop", f"{_shim(backend, 'process')}-from-{host}", by_hand_key(host, backend)
        )
        for host in HOSTS
    ]


def _fanout_rules(backend: str) -> list[Rule]:
    claim = f"answers in ≤ {FANOUT_LIMIT_S * 1e3:g} ms"
    return [
        Rule("fanout", _shim(backend, scope), None, "time", FANOUT_LIMIT_S, claim)
        for scope in ("process", "thread", "call")
    ]


def rules_for(backends: tuple[str, ...]) -> list[Rule]:
    """Every target of *backends* that has one (the built-in ones)."""
    known = [b for b in backends if b in FLOORS]
    return (
        [r for b in known for r in _per_call_rules(b, FLOORS[b])]
        + [r for b in known for r in _flask_rules(b, FLOORS[b])]
        + [r for b in known for r in _fanout_rules(b)]
        + [r for b in known for r in _reentrant_rules(b)]
        + [r for b in known for r in _cross_loop_rules(b)]
    )


# --- checking ---------------------------------------------------------------------


def _text(rule: Rule, cell: Cell) -> str:
    reference = LABELS.get(rule.reference or "", rule.reference or "")
    return f"{rule.workload}: {cell.label} {rule.claim.format(ref=reference)}"


def _shown(rule: Rule, cell: Cell, reference: Cell | None) -> str:
    ratio = rule.ratio(cell, reference)
    if rule.kind == "time":
        return format_seconds(ratio)
    if rule.allowance_s and reference is not None:
        return (
            f"{format_speedup(ratio)} ({format_seconds(cell.median_s)}; "
            f"at most {format_seconds(rule.bound_s(reference))})"
        )
    return format_speedup(ratio)


def _check(rule: Rule, result: BenchResult) -> Target | None:
    cell = next(
        (c for c in result.cells_of(rule.workload) if c.contender.key == rule.contender), None
    )
    if cell is None:  # not part of this run
        return None
    reference = (
        None if rule.reference is None else result.measured_cell(rule.workload, rule.reference)
    )
    fields = (
        _text(rule, cell),
        rule.workload,
        rule.contender,
        rule.reference,
        rule.kind,
        rule.limit,
    )
    allowance = rule.allowance_s
    if not cell.measured:
        why = f"not checked ({cell.label} not measured)"
        return Target(*fields, None, "not checked", why, allowance)
    if rule.reference is not None and reference is None:
        label = LABELS.get(rule.reference, rule.reference)
        why = f"not checked ({label} not measured)"
        return Target(*fields, None, "not checked", why, allowance)
    status: Status = "pass" if rule.met(cell, reference) else "fail"
    ratio = rule.ratio(cell, reference)
    return Target(*fields, ratio, status, _shown(rule, cell, reference), allowance)


def check_targets(result: BenchResult, rules: list[Rule] | None = None) -> list[Target]:
    """The targets of the backends this run measured (default: :func:`rules_for` them),
    each passed, failed, or not checked when one side was not measured."""
    if rules is None:
        rules = rules_for(result.settings.backends)
    return [t for t in (_check(rule, result) for rule in rules) if t is not None]
