"""The node-wide record of verified models: real workers, real files, real hashing.

Hashing is observed by wrapping `verify.verify_model` with a function that
counts its calls and then runs the real one: the files are still read and
checked, only the count is added.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest

from agents.workers import verify
from tests.agents.agent_helpers import WAIT_S
from tests.agents.worker_helpers import (
    fake_spec,
    make_model,
    start,
    stop,
    wait_state,
)


@pytest.fixture
def node(worker_node):
    """The shared worker node, plus where this model's verified record lives."""
    n = worker_node
    n.key = verify.spec_model_key(n.model)
    n.record_path = n.state_dir / "verified" / f"{n.key}.json"
    n.weights = Path(n.model["path"]) / "weights.bin"
    return n


@pytest.fixture
def hashes(monkeypatch) -> list[str]:
    """The model paths `verify_model` was called for, in order (the real one runs)."""
    calls: list[str] = []
    real = verify.verify_model

    def counting(model, *args, **kwargs):
        calls.append(model["path"])
        return real(model, *args, **kwargs)

    monkeypatch.setattr(verify, "verify_model", counting)
    return calls


def read_record(node) -> dict:
    return json.loads(node.record_path.read_text())


def flip_a_byte(path: Path, keep_mtime: bool) -> None:
    """Corrupt one byte in place: same file, same size; the mtime too if asked."""
    before = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(before.st_size // 2)
        byte = f.read(1)
        f.seek(before.st_size // 2)
        f.write(bytes([byte[0] ^ 0x01]))
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert after.st_size == before.st_size and after.st_ino == before.st_ino
    assert (after.st_mtime_ns == before.st_mtime_ns) == keep_mtime


def test_a_second_worker_of_the_same_model_reaches_ready_without_hashing(node, hashes):
    sup = node.supervisor()
    start(sup, fake_spec(node.model, worker_id=1))
    wait_state(sup, "ready", worker_id=1)
    assert hashes == [node.model["path"]]
    assert "verifying" in node.recorder.states(1)

    start(sup, fake_spec(node.model, worker_id=2))
    wait_state(sup, "ready", worker_id=2)
    assert len(hashes) == 1
    states = node.recorder.states(2)
    assert "verifying" not in states and states.index("pending") < states.index("starting")

    record = read_record(node)
    assert record["key"] == node.key
    assert record["model_dir"] == os.path.realpath(node.model["path"])
    assert record["stamps"] == verify.file_stamps(record["model_dir"], node.model["files"])
    assert stat.S_IMODE(os.stat(node.record_path).st_mode) == 0o600
    assert not list(node.record_path.parent.glob(".*.tmp"))
    assert not (node.state_dir / "workers" / "1" / "verified.json").exists()


def test_the_record_outlives_the_agent_and_serves_a_new_worker_id(node, hashes):
    sup = node.supervisor()
    start(sup, fake_spec(node.model, worker_id=1))
    wait_state(sup, "ready", worker_id=1)
    stop(sup, 1)
    sup.close()
    sup2 = node.supervisor()  # a restarted agent, same state dir
    start(sup2, fake_spec(node.model, worker_id=5))
    wait_state(sup2, "ready", worker_id=5)
    assert len(hashes) == 1
    assert "verifying" not in node.recorder.states(5)


def test_a_worker_of_another_model_is_hashed_on_its_own(node, hashes):
    sup = node.supervisor()
    start(sup, fake_spec(node.model, worker_id=1))
    wait_state(sup, "ready", worker_id=1)
    other = make_model(node.root, name="other", size=2**20)
    start(sup, fake_spec(other, worker_id=2))
    wait_state(sup, "ready", worker_id=2)
    assert hashes == [node.model["path"], other["path"]]
    assert "verifying" in node.recorder.states(2)
    assert len(list((node.state_dir / "verified").glob("*.json"))) == 2


class Gate:
    """Holds `verify_model` until opened: the first hash stays in progress."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[str] = []
        self.entered = threading.Event()
        self.open = threading.Event()
        real = verify.verify_model

        def gated(model, *args, **kwargs):
            self.calls.append(model["path"])
            self.entered.set()
            self.open.wait(WAIT_S)
            return real(model, *args, **kwargs)

        monkeypatch.setattr(verify, "verify_model", gated)


@pytest.fixture
def gate(monkeypatch):
    g = Gate(monkeypatch)
    yield g
    g.open.set()  # never leave a worker thread waiting on a failed test


def test_two_workers_of_one_model_starting_together_hash_it_once(node, gate):
    sup = node.supervisor()
    start(sup, fake_spec(node.model, worker_id=1))
    assert gate.entered.wait(WAIT_S)
    start(sup, fake_spec(node.model, worker_id=2))
    wait_state(sup, "verifying", worker_id=2)
    time.sleep(0.5)  # time enough for a second hash to begin, were it not waiting
    assert len(gate.calls) == 1
    assert not node.record_path.exists()
    gate.open.set()
    wait_state(sup, "ready", worker_id=1)
    wait_state(sup, "ready", worker_id=2)
    assert len(gate.calls) == 1
    assert node.record_path.exists()


def test_files_changed_while_they_are_hashed_stop_the_worker_and_are_not_recorded(node, gate):
    sup = node.supervisor()
    start(sup, fake_spec(node.model, worker_id=1))
    assert gate.entered.wait(WAIT_S)  # stamps taken, hashing about to begin
    st = os.stat(node.weights)
    os.utime(node.weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    gate.open.set()
    # What was hashed may not be what is there now (a copy still running): no start.
    status = wait_state(sup, "failed", worker_id=1)
    assert "changed while they were verified" in status["error"]
    assert status["run"] == 0
    assert not node.record_path.exists()
    start(sup, fake_spec(node.model, worker_id=2))
    wait_state(sup, "ready", worker_id=2)
    assert len(gate.calls) == 2 and "verifying" in node.recorder.states(2)
    assert node.record_path.exists()


def test_a_worker_waiting_for_another_verification_stops_at_once(node, gate):
    sup = node.supervisor()
    start(sup, fake_spec(node.model, worker_id=1))
    assert gate.entered.wait(WAIT_S)
    start(sup, fake_spec(node.model, worker_id=2))
    wait_state(sup, "verifying", worker_id=2)
    began = time.monotonic()
    answer = stop(sup, 2)
    assert time.monotonic() - began < 10  # not held until the other hash ends
    assert answer["ok"] and answer["worker"]["state"] == "stopped"
    assert sup.runners[1].snapshot()["state"] == "verifying"  # the first one carries on
    gate.open.set()
    wait_state(sup, "ready", worker_id=1)
    assert len(gate.calls) == 1
    assert sup.runners[2].snapshot()["run"] == 0


def test_a_touched_file_is_hashed_again(node, hashes):
    sup = node.supervisor()
    start(sup, fake_spec(node.model, worker_id=1))
    wait_state(sup, "ready", worker_id=1)
    old = read_record(node)["stamps"]["weights.bin"]
    st = os.stat(node.weights)
    os.utime(node.weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes
    start(sup, fake_spec(node.model, worker_id=2))
    wait_state(sup, "ready", worker_id=2)
    assert len(hashes) == 2 and "verifying" in node.recorder.states(2)
    new = read_record(node)["stamps"]["weights.bin"]
    assert new[1] == old[1] + 10**9


def test_a_file_replaced_by_a_copy_with_the_same_times_is_hashed_again(node, hashes):
    sup = node.supervisor()
    start(sup, fake_spec(node.model, worker_id=1))
    wait_state(sup, "ready", worker_id=1)
    copy = node.weights.with_name("weights.copy")
    shutil.copy2(node.weights, copy)  # same bytes, same mtime, another inode
    os.replace(copy, node.weights)
    start(sup, fake_spec(node.model, worker_id=2))
    wait_state(sup, "ready", worker_id=2)
    assert len(hashes) == 2 and "verifying" in node.recorder.states(2)


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["new-mtime", "mtime-restored"])
def test_a_byte_changed_in_place_is_caught_and_leaves_no_record(node, hashes, keep_mtime):
    sup = node.supervisor()
    start(sup, fake_spec(node.model, worker_id=1))
    wait_state(sup, "ready", worker_id=1)
    stop(sup, 1)
    good = node.weights.read_bytes()
    flip_a_byte(node.weights, keep_mtime)  # same size; with the mtime put back, only ctime moves

    start(sup, fake_spec(node.model, worker_id=2))
    status = wait_state(sup, "failed", worker_id=2)
    assert "weights.bin" in status["error"] and "SHA-256" in status["error"]
    assert status["run"] == 0 and "starting" not in node.recorder.states(2)
    assert len(hashes) == 2
    assert not node.record_path.exists()  # the stale record went with the failure

    # Nothing to trust now: the next worker hashes too, and fails the same way.
    start(sup, fake_spec(node.model, worker_id=3))
    assert "weights.bin" in wait_state(sup, "failed", worker_id=3)["error"]
    assert len(hashes) == 3 and not node.record_path.exists()

    node.weights.write_bytes(good)  # copied again: verified, recorded, started
    start(sup, fake_spec(node.model, worker_id=4))
    wait_state(sup, "ready", worker_id=4)
    assert len(hashes) == 4 and node.record_path.exists()


def test_a_failed_first_verification_creates_no_record(node, hashes):
    flip_a_byte(node.weights, keep_mtime=False)
    sup = node.supervisor()
    start(sup, fake_spec(node.model, worker_id=1))
    assert "weights.bin" in wait_state(sup, "failed", worker_id=1)["error"]
    assert not node.record_path.exists()
    assert not list((node.state_dir / "verified").glob("*"))


CORRUPT_RECORDS = {
    "empty": b"",
    "truncated": b'{"key": "',
    "binary": b"\xff\xfe\x00\x01",
    "a list": b"[]",
    "another key": None,  # a well-formed record naming another model key
    "stamps not a dict": None,
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("kind", list(CORRUPT_RECORDS))
def test_a_corrupt_record_is_ignored_and_replaced(node, hashes, kind):
    content = CORRUPT_RECORDS[kind]
    model_dir = os.path.realpath(node.model["path"])
    stamps = verify.file_stamps(model_dir, node.model["files"])
    if kind == "another key":
        record = {"key": "0" * 64, "model_dir": model_dir, "stamps": stamps}
        content = json.dumps(record).encode()
    elif kind == "stamps not a dict":
        record = {"key": node.key, "model_dir": model_dir, "stamps": "yes"}
        content = json.dumps(record).encode()
    node.record_path.parent.mkdir(parents=True)
    node.record_path.write_bytes(content)

    sup = node.supervisor()
    start(sup, fake_spec(node.model, worker_id=1))
    wait_state(sup, "ready", worker_id=1)
    assert len(hashes) == 1 and "verifying" in node.recorder.states(1)
    assert read_record(node)["stamps"] == stamps  # rewritten, usable by the next worker
    start(sup, fake_spec(node.model, worker_id=2))
    wait_state(sup, "ready", worker_id=2)
    assert len(hashes) == 1


def test_a_record_that_cannot_be_written_does_not_stop_the_worker(node, hashes):
    node.record_path.mkdir(parents=True)  # a directory where the record goes
    sup = node.supervisor()
    start(sup, fake_spec(node.model, worker_id=1))
    wait_state(sup, "ready", worker_id=1)
    start(sup, fake_spec(node.model, worker_id=2))
    wait_state(sup, "ready", worker_id=2)
    assert len(hashes) == 2  # nothing recorded: each worker hashed


# --- VerifiedRecords on its own ---------------------------------------------------


def test_records_are_private_even_over_a_leftover_temporary_file(tmp_path):
    root = tmp_path / "models"
    model = make_model(root)
    records = verify.VerifiedRecords(tmp_path / "verified")
    key = verify.spec_model_key(model)
    model_dir = verify.verify_model(model, [str(root)])
    stamps = verify.file_stamps(model_dir, model["files"])
    leftover = records.path(key).with_name(f".{key}.json.{os.getpid()}.{threading.get_ident()}.tmp")
    records.dir.mkdir()
    leftover.write_text("from a crash")
    leftover.chmod(0o644)
    old_umask = os.umask(0o022)
    try:
        records.write(key, model, model_dir, stamps)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(records.path(key)).st_mode) == 0o600
    assert not leftover.exists()
    assert records.lookup(key, model, [str(root)]) == model_dir


def test_a_record_holds_only_while_the_path_checks_and_sizes_do(tmp_path):
    root = tmp_path / "models"
    model = make_model(root)
    records = verify.VerifiedRecords(tmp_path / "verified")
    key = verify.spec_model_key(model)
    model_dir = verify.verify_model(model, [str(root)])
    records.write(key, model, model_dir, verify.file_stamps(model_dir, model["files"]))
    assert records.lookup(key, model, [str(root)]) == model_dir
    # The agent restarted with other model roots: the record does not let it in.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert records.lookup(key, model, [str(elsewhere)]) is None
    # A spec whose size disagrees is checked for real (verify_model names the file).
    files = [
        dict(f, size=f["size"] + 1) if f["path"] == "config.json" else f for f in model["files"]
    ]
    assert records.lookup(key, dict(model, files=files), [str(root)]) is None
    with pytest.raises(ValueError):
        records.path("../../etc/passwd")
    records.forget(key)
    records.forget(key)  # already gone: no error
    assert records.lookup(key, model, [str(root)]) is None
