"""Every resume code has an example that triggers it and a section in docs/checks.md quoting its
real message; each refusal leaves the store as it was, and check_runs agrees with resume."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import resume_examples as ex
from resume_examples import EXAMPLES

from statemachine_agent import Outcome, ResumeCode
from statemachine_agent.stores import SQLiteStore

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "checks.md").read_text(encoding="utf-8").split(
    "## Resuming a stored run under a changed workflow")[1]


def test_every_resume_code_has_an_example() -> None:
    assert set(EXAMPLES) == {str(c) for c in ResumeCode}


@pytest.mark.parametrize("code", sorted(EXAMPLES))
def test_each_example_gives_its_code(code: str) -> None:
    """One change, one code (and what ALSO_REPORTED says comes with it); never a raw exception."""
    codes = {str(p.code) for p in EXAMPLES[code]().problems}
    assert code in codes
    assert codes - {code} <= ex.ALSO_REPORTED.get(code, set())


@pytest.mark.parametrize("code", sorted(EXAMPLES))
def test_the_checks_page_quotes_the_real_message(code: str) -> None:
    """docs/checks.md has a ``### code`` heading and quotes the example's message word for word."""
    headings = {c for line in PAGE.splitlines() if line.startswith("### ")
                for c in re.findall(r"resume-[a-z-]+", line)}
    assert code in headings
    [message] = [p.message for p in EXAMPLES[code]().problems if p.code == code][:1]
    assert f"> {message}\n" in PAGE


def test_the_checks_page_names_no_resume_code_that_does_not_exist() -> None:
    assert set(re.findall(r"resume-[a-z]+(?:-[a-z]+)*", PAGE)) <= {str(c) for c in ResumeCode}


def test_every_quoted_resume_message_is_real() -> None:
    real = {p.message for make in EXAMPLES.values() for p in make().problems}
    quoted = [line[2:] for line in PAGE.splitlines() if line.startswith("> ")]
    assert len(quoted) == len(EXAMPLES)
    assert [q for q in quoted if q not in real] == []


@pytest.mark.parametrize(("kind", "change"), [
    ("waiting", {"wait": "review"}), ("waiting", {"event": "approved"}), ("waiting", {"context": ex.Ticket2}),
    ("waiting", {"reads_note": True}), ("waiting", {"retry": False}), ("waiting", {"retries": 1}),
    ("in-pay", {"tool": "pay_card"}), ("in-pay", {"effect": "idempotent"}), ("after-pay", {"numbered": True}),
    ("early-event", {"context": ex.SignedTicket, "payload": ex.SignedApproval}),
])
def test_check_runs_lists_exactly_what_resume_refuses(tmp_path: Path, kind: str, change: dict[str, Any]) -> None:
    """check_runs, run before a deploy, names the run with the very problems resume gives; the
    unchanged workflow lists nothing."""
    new = ex.flow(**change)
    refused = ex.refusal(kind, new)
    with SQLiteStore(tmp_path / "runs.db") as store:
        ex.stored(kind, store)
        assert ex.flow().check_runs(store) == []
        [listed] = new.check_runs(store)
    assert listed.run_id == "t-1"
    assert listed.problems == refused.problems


def test_a_migration_that_names_the_new_event_continues_the_waiting_run(tmp_path: Path) -> None:
    new = ex.flow(event="approved")
    with SQLiteStore(tmp_path / "runs.db") as store:
        ex.stored("waiting", store)
        paused = new.resume_sync("t-1", store=store,
                                 migrate=lambda p: p.model_copy(update={"waiting_for": "approved"}))
        assert paused.outcome is Outcome.WAITING and paused.waiting == "approved"
        record = store.load("t-1").result().run
        # The migration was committed by the pause: the run now fits the new version as stored.
        assert record.wait is not None and record.wait.event == "approved"
        assert record.fingerprint == new.fingerprint
        result = new.deliver_sync("t-1", "approved", {"ok": True}, store=store)
    assert result is not None and result.terminal == "done"


@pytest.mark.parametrize("accept", [False, True])
def test_an_open_intent_under_a_tool_now_idempotent_never_runs_again_unless_migrate_says_so(
        tmp_path: Path, accept: bool) -> None:
    ex.PAID.clear()
    new = ex.flow(effect="idempotent")
    with SQLiteStore(tmp_path / "runs.db") as store:
        ex.stored("in-pay", store)
        assert ex.PAID == ["pay 3"]
        if not accept:
            with pytest.raises(ex.IncompatibleRun):
                new.resume_sync("t-1", store=store)
            assert ex.PAID == ["pay 3"]
            return

        def may_run_again(point: Any) -> Any:
            calls = [c.model_copy(update={"effect": "idempotent"}) for c in point.calls]
            return point.model_copy(update={"calls": calls})

        result = new.resume_sync("t-1", store=store, migrate=may_run_again)
    assert result.terminal == "done" and ex.PAID == ["pay 3", "pay 3"]


def test_an_open_intent_is_reconciled_as_journaled_under_the_same_effect(tmp_path: Path) -> None:
    """Control: under version 1 itself the open intent takes the unknown-outcome route, no second pay."""
    ex.PAID.clear()
    with SQLiteStore(tmp_path / "runs.db") as store:
        ex.stored("in-pay", store)
        result = ex.flow().resume_sync("t-1", store=store)
    assert result.terminal == "unknown" and ex.PAID == ["pay 3"]


def test_a_migration_can_fix_a_queued_payload(tmp_path: Path) -> None:
    new = ex.flow(context=ex.SignedTicket, payload=ex.SignedApproval)

    def sign(point: Any) -> Any:
        inbox = [e.model_copy(update={"payload": {**e.payload, "by": "ann"}}) for e in point.inbox]
        return point.model_copy(update={"inbox": inbox})

    with SQLiteStore(tmp_path / "runs.db") as store:
        ex.stored("early-event", store)
        result = new.resume_sync("t-1", store=store, migrate=sign)
    assert result.terminal == "done"
    assert result.context.approval is not None and result.context.approval.by == "ann"  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad", [
    lambda p: p.model_copy(update={"traversals": {"retry": -1, "triage_to_approve": 1}}),
    lambda p: None,
    lambda p: {"state": "approve"},
    lambda p: p.model_copy(update={"run_id": "t-2"}),
    lambda p: p.model_copy(update={"next_step": 0}),
    lambda p: p.model_copy(update={"visits": {"triage": "many"}}),
    lambda p: p.model_copy(update={"traversals": {"retry": 1, "triage_to_approve": 2**60}}),
    lambda p: p.model_copy(update={"traversals": {"retry": 1, "triage_to_approve": 1},
                                   "context": {**p.context, "score": float("nan")}}),
    lambda p: p.model_copy(update={"traversals": {"retry": 1, "triage_to_approve": 1}, "state": "done"}),
    lambda p: p.model_copy(update={"traversals": {"retry": 1, "triage_to_approve": 1}, "written": ["nope"]}),
])
def test_a_migration_that_returns_garbage_is_refused_and_writes_nothing(bad: Any) -> None:
    refused = ex.refusal("waiting", ex.flow(retries=1), migrate=bad)
    assert refused.problems[0].code == ResumeCode.BAD_MIGRATION
    assert "<lambda>" in refused.problems[0].message


@pytest.mark.parametrize("kind", ["waiting", "in-pay", "after-pay", "early-event"])
@pytest.mark.parametrize("change", sorted(ex.SAFE))
def test_the_safe_changes_continue_without_a_migration(tmp_path: Path, change: str, kind: str) -> None:
    """What docs/durability.md lists as safe: the run continues to a terminal of the new version,
    and the at_most_once call is never made twice."""
    ex.PAID.clear()
    new = ex.flow(**ex.SAFE[change])
    with SQLiteStore(tmp_path / "runs.db") as store:
        ex.stored(kind, store)
        assert new.check_runs(store) == []
        result = new.resume_sync("t-1", store=store)
        if result.outcome is Outcome.WAITING:
            delivered = new.deliver_sync("t-1", "approval", {"ok": True}, store=store)
            assert delivered is not None
            result = delivered
    assert result.terminal in {"done", "unknown"}
    assert len(ex.PAID) == 1
