"""Secrets in durable runs (issue 16, group 2): a SecretStr/SecretBytes field keeps its real value
across a wait, a crash, a fork and a replay, and never appears in clear anywhere the library writes.

Real parts only: real SQLite files, real Fernet (``cryptography``), the real command line. A crash is
an exception that is not an ``Exception`` (as in tests/test_durable.py): what it leaves in the store
is what a killed process leaves.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, SecretBytes, SecretStr, create_model

from statemachine_agent import UNSET, Context, Workflow
from statemachine_agent.cli import main
from statemachine_agent.diagrams import to_dot
from statemachine_agent.errors import StoreCorrupted, StoreError
from statemachine_agent.secrets import (
    FernetSecrets,
    SecretCodec,
    SecretKeyError,
    SecretsNotStorable,
    SecretUnreadable,
)
from statemachine_agent.stores import MemoryStore, SQLiteStore
from statemachine_agent.testing import check_workflow

CANARY = "sk-CANARY-7f3a9c2e1b5d"
ROTATED = CANARY + "-rotated"
BLOB = b"\x00CANARY-BYTES\xff\x10"


class Crash(BaseException):
    """Stands for the process dying: never routed, never caught by the runner."""


class Approval(BaseModel):
    ok: bool


class Job(Context):
    api_key: SecretStr
    blob: SecretBytes | None = None
    session: SecretStr = UNSET
    approval: Approval = UNSET
    seen: str = UNSET


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def make_flow(*, crash: list[bool] | None = None, suffix: str = "-rotated") -> Any:
    """approve (a wait) -> rotate (writes the secret: its delta holds one) -> use (reads it; crashes
    once when ``crash`` holds True) -> done."""
    crash = crash if crash is not None else []
    wf = Workflow("secretjob", Job)
    wf.wait("approve", event="approval", payload=Approval, writes=["approval"], initial=True)

    @wf.state(reads=["api_key"], writes=["api_key", "session"])
    def rotate(ctx: Job) -> None:
        ctx.api_key = SecretStr(ctx.api_key.get_secret_value().removesuffix(suffix) + suffix)
        ctx.session = SecretStr("session-of-" + ctx.api_key.get_secret_value())

    @wf.state(reads=["api_key", "session"], optional_reads=["blob"], writes=["seen"])
    def use(ctx: Job) -> None:
        if crash and crash.pop():
            raise Crash
        blob = ctx.blob.get_secret_value() if ctx.blob is not None else b""
        ctx.seen = digest(ctx.api_key.get_secret_value() + blob.hex() + ctx.session.get_secret_value())

    wf.terminal("done")
    wf.terminal("rejected", outcome="failure")
    wf.transition("approve", "rotate", guard=lambda c: c.approval.ok)
    wf.transition("approve", "rejected")
    wf.transition("rotate", "use")
    wf.transition("use", "done")
    return wf.compile()


EXPECTED_SEEN = digest(ROTATED + BLOB.hex() + "session-of-" + ROTATED)


def codec() -> FernetSecrets:
    return FernetSecrets(FernetSecrets.generate_key())


def file_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists())


def run_cli(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue() + err.getvalue()


def assert_hidden(where: str, text: str | bytes) -> None:
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    for secret in (CANARY.encode(), b"CANARY-BYTES", b"session-of-"):
        assert secret not in data, f"a secret in clear in {where}"


# --- the canary ------------------------------------------------------------------------------------
def test_a_canary_secret_survives_wait_crash_fork_and_replay_and_never_appears_in_clear(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The canary is read back equal after a wait + deliver, a crash + resume and a fork, and is in
    no log, event, `runs show` (text, --json), diagram, result dict, story, error or store byte."""
    caplog.set_level(logging.DEBUG, logger="statemachine_agent")
    events: list[Any] = []
    crash = [True]
    compiled = make_flow(crash=crash)
    db = tmp_path / "runs.db"
    keys = codec()
    outputs: dict[str, str] = {}
    with SQLiteStore(db, secrets=keys) as store:
        paused = compiled.run_sync(Job(api_key=CANARY, blob=BLOB), store=store, run_id="job-1",
                                   hooks=[events.append])
        assert paused.waiting == "approval"
        # wait + deliver: the run continues in "another process" from the store, and then crashes in `use`
        with pytest.raises(Crash):
            compiled.deliver_sync("job-1", "approval", {"ok": True}, store=store, hooks=[events.append])
        # crash + resume: the context is rebuilt from the snapshot at the wait and rotate's delta
        done = compiled.resume_sync("job-1", store=store, hooks=[events.append])
        assert done.terminal == "done"
        assert done.context.api_key.get_secret_value() == ROTATED
        assert done.context.blob is not None and done.context.blob.get_secret_value() == BLOB
        assert done.context.seen == EXPECTED_SEEN  # the state read the real values, not the mask
        # a finished run's stored result
        again = compiled.resume_sync("job-1", store=store)
        assert again.context.api_key.get_secret_value() == ROTATED
        assert again.context.session.get_secret_value() == "session-of-" + ROTATED
        # forks: before rotate (the original secret) and after it (the secret from a step's delta)
        early = compiled.fork_sync("job-1", at_step=1, store=store, new_run_id="fork-1", hooks=[events.append])
        late = compiled.fork_sync("job-1", at_step=2, store=store, new_run_id="fork-2")
        assert early.context.seen == late.context.seen == EXPECTED_SEEN
        assert early.context.api_key.get_secret_value() == late.context.api_key.get_secret_value() == ROTATED
        report = compiled.replay_sync("job-1", store=store)
        assert report.ok, str(report)
        outputs["replay"] = str(report)
        outputs["wal"] = repr(file_bytes(db))  # while the store is open, the -wal holds the commits
        assert_hidden("the store's files (open)", file_bytes(db))
    for name, value in {"paused": paused, "done": done, "again": again, "early": early}.items():
        outputs[f"{name}.to_dict"] = json.dumps(value.to_dict(), default=str)
        outputs[f"{name} repr"] = repr(value) + str(value.context) + repr(value.context)
        outputs[f"{name} diagram"] = to_dot(compiled, value).source + to_dot(compiled, value.to_dict()).source
    outputs["events"] = "\n".join(repr(e) for e in events)
    assert {type(e).__name__ for e in events} >= {"RunStarted", "TransitionTaken"}
    assert any("rotate -> use" in r.getMessage() for r in caplog.records)
    outputs["logs"] = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    for run_id in ("job-1", "fork-1"):
        code, text = run_cli(["runs", "show", run_id, "--store", str(db)])
        assert code == 0 and run_id in text
        outputs[f"runs show {run_id}"] = text
        code, text = run_cli(["runs", "show", run_id, "--store", str(db), "--json"])
        assert code == 0 and json.loads(text)["run"]["run_id"] == run_id
        outputs[f"runs show --json {run_id}"] = text
    code, text = run_cli(["runs", "list", "--store", str(db)])
    outputs["runs list"] = text
    # errors: a wrong key, and a store without a codec
    with SQLiteStore(db, secrets=codec()) as wrong, pytest.raises(SecretUnreadable) as unreadable:
        compiled.resume_sync("job-1", store=wrong)
    outputs["wrong key error"] = str(unreadable.value) + repr(unreadable.value)
    with SQLiteStore(db) as bare, pytest.raises(SecretsNotStorable) as refused:
        compiled.run_sync(Job(api_key=CANARY), store=bare, run_id="job-2")
    outputs["refusal"] = str(refused.value) + repr(refused.value)
    for where, text in outputs.items():
        assert_hidden(where, text)
    assert_hidden("the store's files (closed)", file_bytes(db))


def test_the_testing_kits_stories_hide_the_secret(tmp_path: Path) -> None:
    """A failing story (its text, its saved JSON, the AssertionError) shows the mask, not the value."""
    compiled = make_flow()
    saved = tmp_path / "story.json"
    with pytest.raises(AssertionError) as failed:
        check_workflow(compiled, contexts_from=st.just(Job(api_key=CANARY, blob=BLOB)), max_examples=3,
                       invariants=[lambda ctx: False], save_failure=saved, print_coverage=False,
                       derandomize=True)
    assert "story of a run" in str(failed.value)
    assert_hidden("a story's text", str(failed.value))
    assert_hidden("a saved story", saved.read_text(encoding="utf-8"))


# --- what is stored, and refusals -------------------------------------------------------------------
def test_the_store_holds_a_token_that_only_the_codec_opens(tmp_path: Path) -> None:
    """The stored context holds {"$secret": token} for each secret field, the token opens to the
    value with the store's codec, and a field not declared secret is never decoded."""
    keys = codec()
    with SQLiteStore(tmp_path / "runs.db", secrets=keys) as store:
        make_flow().run_sync(Job(api_key=CANARY), store=store, run_id="j")
        stored = store.load("j").result().context
    assert set(stored["api_key"]) == {"$secret"}
    assert keys.decrypt(stored["api_key"]["$secret"]) == CANARY.encode()
    assert stored["blob"] is None and "session" not in stored  # None stays null; UNSET stays absent

    class Plain(Context):
        note: dict[str, str]

    wf = Workflow("plain", Plain)
    wf.add_state("s", lambda c: None, initial=True, reads=["note"])
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("s", "done")
    looks_sealed = {"$secret": keys.encrypt(b"not a secret field")}
    with MemoryStore(secrets=keys) as store:
        result = wf.compile().run_sync(Plain(note=looks_sealed), store=store, run_id="p")
        assert store.load("p").result().context["note"] == looks_sealed
        assert wf.compile().resume_sync("p", store=store).context.note == looks_sealed == result.context.note


def test_a_run_holding_a_secret_is_refused_without_a_codec_before_anything_is_stored(tmp_path: Path) -> None:
    """No codec: SecretsNotStorable names every secret field and says to pass secrets=; no run is stored
    (never the mask)."""
    with SQLiteStore(tmp_path / "runs.db") as store:
        with pytest.raises(SecretsNotStorable, match=r"'api_key'.*'blob'.*'session'.*pass secrets=") as refused:
            make_flow().run_sync(Job(api_key=CANARY), store=store, run_id="j")
        assert refused.value.fields == ("api_key", "blob", "session")
        assert refused.value.run_id == "j"
        assert store.list_runs().result() == []
    assert isinstance(refused.value, StoreError)
    assert b"**********" not in file_bytes(tmp_path / "runs.db")


def _nested(draw: st.DrawFn, depth: int) -> tuple[Any, str]:
    """A type holding a secret below the top level, and the path the refusal must name (below ``x``)."""
    if depth == 0:
        return draw(st.sampled_from([SecretStr, SecretBytes])), ""
    inner, path = _nested(draw, depth - 1)
    kind = draw(st.sampled_from(["list", "dict", "tuple", "optional", "model", "union"]))
    if kind == "list":
        return list[inner], f"[]{path}"  # type: ignore[valid-type]
    if kind == "dict":
        return dict[str, inner], f"[]{path}"  # type: ignore[valid-type]
    if kind == "tuple":
        return tuple[inner, ...], f"[]{path}"  # type: ignore[valid-type]
    if kind == "optional":
        return inner | None, path
    if kind == "union":
        return inner | int, path
    name = draw(st.sampled_from(["inner", "token", "creds"]))
    return create_model(f"Sub{depth}", **{name: (inner, ...)}), f".{name}{path}"


@st.composite
def nested_secrets(draw: st.DrawFn) -> tuple[Any, str]:
    annotation, path = _nested(draw, draw(st.integers(1, 3)))
    if path == "" and not (hasattr(annotation, "__args__") and int in annotation.__args__):
        annotation = list[annotation]  # Optional alone is a supported top-level secret
        path = "[]"
    return annotation, "x" + path


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=nested_secrets(), with_codec=st.booleans())
def test_a_secret_below_the_top_level_is_refused_at_start_naming_its_path(case: tuple[Any, str],
                                                                          with_codec: bool) -> None:
    """Nested secrets (in sub-models, containers, unions with other types) are not supported: refused
    at the run's start, with or without a codec, naming the field path; nothing is stored."""
    annotation, path = case
    model = create_model("Nest", __base__=Context, x=(annotation, UNSET), n=(int, 0))
    wf = Workflow("nest", model)
    wf.add_state("s", lambda c: None, initial=True, reads=["n"])
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("s", "done")
    with MemoryStore(secrets=codec() if with_codec else None) as store:
        with pytest.raises(SecretsNotStorable) as refused:
            wf.compile().run_sync(model(), store=store, run_id="n")
        assert path in refused.value.fields, (path, refused.value.fields)
        assert repr(path) in str(refused.value) and "top-level" in str(refused.value)
        assert store.list_runs().result() == []


# --- reading back ----------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(text=st.text(min_size=1, max_size=40), blob=st.binary(min_size=1, max_size=40))
def test_any_secret_round_trips_through_a_wait_and_is_never_in_the_file(text: str, blob: bytes) -> None:
    """Any text and bytes come back equal after the run waited and was continued from the file, and
    neither is in the file's bytes (prefixed so that they cannot occur there by chance)."""
    secret, raw = "sk-" + CANARY + text, b"sk-CANARY" + blob
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "runs.db"
        keys = codec()
        with SQLiteStore(db, secrets=keys) as store:
            make_flow().run_sync(Job(api_key=secret, blob=raw), store=store, run_id="r")
            assert secret.encode() not in file_bytes(db) and raw not in file_bytes(db)
        with SQLiteStore(db, secrets=keys) as store:
            result = make_flow().deliver_sync("r", "approval", {"ok": True}, store=store)
            assert secret.encode() not in file_bytes(db) and raw not in file_bytes(db)
    assert result.context.api_key.get_secret_value() == secret + "-rotated"
    assert result.context.blob is not None and result.context.blob.get_secret_value() == raw
    assert result.context.seen == digest(secret + "-rotated" + raw.hex() + "session-of-" + secret + "-rotated")


def test_a_wrong_key_or_a_damaged_token_is_a_typed_error_naming_run_and_field(tmp_path: Path) -> None:
    """Never resumed with a wrong value: SecretUnreadable (a StoreCorrupted) names the run and field,
    for a wrong key, a token changed after it was made, and for a paused run looked at too."""
    keys = codec()
    db = tmp_path / "runs.db"
    with SQLiteStore(db, secrets=keys) as store:
        make_flow().run_sync(Job(api_key=CANARY), store=store, run_id="j")
        make_flow().run_sync(Job(api_key=CANARY), store=store, run_id="d")
        make_flow().deliver_sync("d", "approval", {"ok": True}, store=store)

    class Tampered:
        def encrypt(self, data: bytes) -> str:
            return keys.encrypt(data)

        def decrypt(self, token: str) -> bytes:
            i = len(token) // 2
            return keys.decrypt(token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:])

    for bad in (codec(), Tampered()):
        with SQLiteStore(db, secrets=bad) as store:
            for run_id, attempt in (
                    ("j", lambda s=store: make_flow().resume_sync("j", store=s)),  # paused: only looked at
                    ("j", lambda s=store: make_flow().deliver_sync("j", "approval", {"ok": True}, store=s)),
                    ("j", lambda s=store: make_flow().fork_sync("j", at_step=0, store=s)),
                    ("d", lambda s=store: make_flow().resume_sync("d", store=s)),  # ended: its stored result
                    ("d", lambda s=store: make_flow().fork_sync("d", at_step=2, store=s)),
                    ("d", lambda s=store: make_flow().replay_sync("d", store=s))):
                with pytest.raises(SecretUnreadable, match=rf"run '{run_id}'.*field 'api_key'.*cannot be decrypted"
                                   ) as e:
                    attempt()
                assert isinstance(e.value, StoreCorrupted)
                assert (e.value.run_id, e.value.field) == (run_id, "api_key")
            assert store.load("j").result().inbox == []  # a refused delivery commits nothing
    with SQLiteStore(db) as store:
        with pytest.raises(SecretsNotStorable, match="secrets="):
            make_flow().resume_sync("j", store=store)
        with pytest.raises(SecretsNotStorable, match="secrets="):  # refused before the event is committed
            make_flow().deliver_sync("j", "approval", {"ok": True}, store=store)
        assert store.load("j").result().inbox == []
    with SQLiteStore(db, secrets=keys) as store:  # the right key still opens it: nothing was lost
        assert make_flow().deliver_sync("j", "approval", {"ok": True}, store=store).context.seen == \
            digest(ROTATED + "session-of-" + ROTATED)


def test_a_stored_mask_is_never_resumed_and_a_fork_can_give_the_secret_again(tmp_path: Path) -> None:
    """A run stored when the field was a plain str holding the mask (what earlier versions stored)
    is refused by the secret-typed workflow; a fork patching the field continues with the new value."""

    class Old(Context):
        api_key: str
        approval: Approval = UNSET
        session: str = UNSET
        seen: str = UNSET

    wf = Workflow("secretjob", Old)
    wf.wait("approve", event="approval", payload=Approval, writes=["approval"], initial=True)
    wf.add_state("rotate", lambda c: None, reads=["api_key"], writes=["api_key", "session"])
    wf.add_state("use", lambda c: None, reads=["api_key", "session"], writes=["seen"])
    wf.terminal("done")
    wf.terminal("rejected", outcome="failure")
    wf.transition("approve", "rotate", guard=lambda c: c.approval.ok)
    wf.transition("approve", "rejected")
    wf.transition("rotate", "use")
    wf.transition("use", "done")
    with SQLiteStore(tmp_path / "runs.db", secrets=codec()) as store:
        wf.compile().run_sync(Old(api_key="**********"), store=store, run_id="old")
        new = make_flow()
        with pytest.raises(SecretUnreadable, match=r"run 'old'.*field 'api_key'.*mask.*fork it with patch"):
            new.deliver_sync("old", "approval", {"ok": True}, store=store)
        with pytest.raises(SecretUnreadable, match="'api_key'"):
            new.fork_sync("old", at_step=0, store=store)
        paused = new.fork_sync("old", at_step=0, patch={"api_key": CANARY}, store=store, new_run_id="fixed")
        assert paused.waiting == "approval"
        fixed = new.deliver_sync("fixed", "approval", {"ok": True}, store=store)
    assert fixed.context.api_key.get_secret_value() == ROTATED
    assert fixed.context.seen == digest(ROTATED + "session-of-" + ROTATED)


def test_replay_compares_secrets_without_showing_them(tmp_path: Path) -> None:
    """Replaying a run whose steps wrote secrets matches with unchanged code (tokens differ every
    time they are made), and diverges when the code now writes another secret, without its value."""
    with SQLiteStore(tmp_path / "runs.db", secrets=codec()) as store:
        make_flow().run_sync(Job(api_key=CANARY), store=store, run_id="j")
        make_flow().deliver_sync("j", "approval", {"ok": True}, store=store)
        assert make_flow().replay_sync("j", store=store).ok
        report = make_flow(suffix="-other").replay_sync("j", store=store)
    assert report.diverged_at == 1 and "delta" in report.reason
    assert report.expected is not None and report.got is not None
    assert report.expected["delta"]["api_key"] != report.got["delta"]["api_key"]
    assert_hidden("a replay report", f"{report} {report.expected} {report.got}")


# --- the codec -------------------------------------------------------------------------------------
def test_fernet_from_env_names_the_variable_and_never_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset, empty and invalid keys are SecretKeyError naming the variable; the key is in no message."""
    monkeypatch.delenv("SMA_TEST_KEY", raising=False)
    with pytest.raises(SecretKeyError, match="SMA_TEST_KEY is not set"):
        FernetSecrets.from_env("SMA_TEST_KEY")
    monkeypatch.setenv("SMA_TEST_KEY", "  ")
    with pytest.raises(SecretKeyError, match="SMA_TEST_KEY is empty"):
        FernetSecrets.from_env("SMA_TEST_KEY")
    bad = "CANARYKEY-" + "x" * 34
    monkeypatch.setenv("SMA_TEST_KEY", bad)
    with pytest.raises(SecretKeyError, match=r"SMA_TEST_KEY.*not a Fernet key") as e:
        FernetSecrets.from_env("SMA_TEST_KEY")
    assert "CANARYKEY" not in str(e.value) + repr(e.value)
    good = FernetSecrets.generate_key()
    monkeypatch.setenv("SMA_TEST_KEY", good)
    made = FernetSecrets.from_env("SMA_TEST_KEY")
    assert isinstance(made, SecretCodec) and good not in repr(made)
    assert made.decrypt(made.encrypt(b"x")) == b"x"


def test_keys_rotate_the_first_encrypts_and_every_one_decrypts(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    """A run stored under the old key continues under "new,old" and its new commits use the new key."""
    old, new = FernetSecrets.generate_key(), FernetSecrets.generate_key()
    with SQLiteStore(tmp_path / "runs.db", secrets=FernetSecrets(old)) as store:
        make_flow().run_sync(Job(api_key=CANARY), store=store, run_id="j")
    monkeypatch.setenv("SMA_TEST_KEY", f"{new},{old}")
    with SQLiteStore(tmp_path / "runs.db", secrets=FernetSecrets.from_env("SMA_TEST_KEY")) as store:
        result = make_flow().deliver_sync("j", "approval", {"ok": True}, store=store)
        token = store.load("j").result().context["api_key"]["$secret"]
    assert result.context.api_key.get_secret_value() == ROTATED
    assert FernetSecrets(new).decrypt(token) == ROTATED.encode()


def test_a_store_refuses_a_secrets_object_that_is_no_codec(tmp_path: Path) -> None:
    """secrets= must have encrypt and decrypt: a key string given by mistake is refused at once."""
    with pytest.raises(TypeError, match=r"encrypt.*decrypt"):
        SQLiteStore(tmp_path / "runs.db", secrets=FernetSecrets.generate_key())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"encrypt.*decrypt"):
        MemoryStore(secrets=object())  # type: ignore[arg-type]
    assert not (tmp_path / "runs.db").exists()
