"""The state store, on a throw-away ASTROSTACK_HOME."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from astrostack import paths, state
from astrostack.errors import InvalidInput, UnknownCluster
from astrostack.spec import ClusterSpec

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTROSTACK_HOME", str(tmp_path))
    return tmp_path

SSH = {"allowed_cidr": "172.24.4.1/32"}


def new_record(name: str = "demo") -> state.ClusterRecord:
    return state.ClusterRecord.from_spec(ClusterSpec(name=name, hosts=3, nodes=12, ssh=SSH), stack_name=f"astro-{name}")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_save_then_load_round_trips_the_record():
    record = new_record()
    record.image_digests = {"astrostack/mpi-base:latest": "sha256:" + "a" * 64}
    record.jobs.append({"id": "job-1", "exit_code": 0})

    state.save(record)
    loaded = state.load("demo")

    assert loaded == record
    assert loaded.spec["hosts"] == 3 and loaded.hosts_target == 3 and loaded.nodes_target == 12
    assert loaded.spec_hash == ClusterSpec(name="demo", hosts=3, nodes=12, ssh=SSH).spec_hash()


def test_state_file_is_0600_in_a_0700_directory(home):
    os.chmod(paths.state_dir(), 0o755)

    path = state.save(new_record())

    assert path == home / "clusters" / "demo.json"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700


def test_save_is_atomic_when_the_write_is_interrupted(monkeypatch):
    record = new_record()
    path = state.save(record)
    before = path.read_text()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(state.os, "replace", crash)
    record.status = "ready"
    with pytest.raises(OSError):
        state.save(record)

    assert path.read_text() == before  # the old record, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["demo.json"]  # no temp file left


def test_save_leaves_no_temporary_files():
    path = state.save(new_record())
    state.save(new_record())

    assert sorted(p.name for p in path.parent.iterdir()) == ["demo.json"]


def test_load_missing_raises_unknown_cluster_with_a_hint():
    with pytest.raises(UnknownCluster) as caught:
        state.load("nope")

    assert str(caught.value) == "no cluster named 'nope' is recorded here (`astrostack list` shows the clusters)"
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("bad", ["binary", "truncated", "directory", "unreadable"])
def test_one_bad_record_never_hides_the_others_and_is_named(bad):
    state.save(new_record("good"))
    path = state.state_path("bad")
    if bad == "binary":
        path.write_bytes(b"\xff\xfe\x00garbage")
    elif bad == "truncated":
        path.write_text(state.state_path("good").read_text()[:40])
    elif bad == "directory":
        path.mkdir()
    else:
        path.write_text("{}")
        path.chmod(0)

    records, problems = state.scan()
    record, problem = state.try_load("bad")

    assert [r.name for r in records] == ["good"]
    assert len(problems) == 1 and str(path) in problems[0].message
    assert record is None and problem is not None and "\n" not in problem.message
    if bad != "unreadable" or os.geteuid() != 0:  # root reads a mode-0 file anyway
        assert problem.message.startswith(str(path))
    assert state.delete("bad") and not path.exists() and state.try_load("bad") == (None, None)


def test_corrupt_file_is_named():
    path = state.state_path("demo")
    path.write_text("{not json")

    with pytest.raises(state.StateCorrupt) as caught:
        state.load("demo")

    assert str(path) in caught.value.message


@pytest.mark.parametrize("name", ["../etc/passwd", "Demo", "", "a/b", "-x"])
def test_names_cannot_escape_the_state_dir(name):
    with pytest.raises(InvalidInput):
        state.state_path(name)


def test_exists_list_and_delete():
    for name in ("zeta", "alpha"):
        state.save(new_record(name))

    assert state.exists("alpha") and not state.exists("beta")
    assert [record.name for record in state.list_records()] == ["alpha", "zeta"]
    assert state.delete("alpha") is True
    assert state.delete("alpha") is False
    assert [record.name for record in state.list_records()] == ["zeta"]


def test_record_phase_keeps_wall_clock_iso_times():
    record = new_record()
    state.record_phase(record, "stack", now=T0)
    state.record_phase(record, "stack", "done", now=T0 + timedelta(seconds=41))
    state.record_phase(record, "hosts", now=T0 + timedelta(seconds=41))
    state.save(record, now=T0 + timedelta(seconds=42))

    saved = json.loads(state.state_path("demo").read_text())

    assert saved["phases"]["stack"] == {"started": "2024-05-01T12:00:00Z",
                                        "finished": "2024-05-01T12:00:41Z", "outcome": "done"}
    assert saved["phases"]["hosts"] == {"started": "2024-05-01T12:00:41Z", "finished": None, "outcome": None}
    assert saved["updated"] == "2024-05-01T12:00:42Z"
    assert state.load("demo").phases["stack"].finished - state.load("demo").phases["stack"].started == timedelta(
        seconds=41)


def test_finishing_a_phase_never_started_sets_both_times():
    record = new_record()

    entry = state.record_phase(record, "nodes", "failed", now=T0)

    assert entry.started == entry.finished == T0 and entry.outcome == "failed"


def test_evidence_dir_is_beside_the_state(home):
    directory = state.evidence_dir("demo", "20240501T120000-ab12")

    assert directory == home / "clusters" / "demo.runs" / "20240501T120000-ab12"
    assert directory.is_dir() and mode(directory) == 0o700
    with pytest.raises(InvalidInput):
        state.evidence_dir("demo", "../escape")


LOCK_HOLDER = """
import sys
from astrostack import state
with state.cluster_lock("demo"):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_lock_held_by_another_process_names_its_pid(home):
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "ASTROSTACK_HOME": str(home)})
    try:
        assert holder.stdout.readline().strip() == "locked"

        with pytest.raises(state.ClusterBusy) as caught, state.cluster_lock("demo"):
            pass

        assert caught.value.message == f"cluster demo is busy: another astrostack process (pid {holder.pid}) holds it"
    finally:
        holder.communicate("\n", timeout=10)

    with state.cluster_lock("demo") as lock:  # released when the holder exits
        assert lock.read_text() == f"{os.getpid()}\n"


def test_lock_is_released_after_the_block():
    with state.cluster_lock("demo"):
        pass
    with state.cluster_lock("demo"):
        pass


def test_a_resumed_deployment_keeps_what_the_first_attempt_measured():
    record = new_record()
    first = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    state.record_phase(record, "stack", now=first)
    state.record_phase(record, "stack", "done", now=first + timedelta(seconds=30))
    state.record_phase(record, "hosts", now=first + timedelta(seconds=30))
    state.record_phase(record, "hosts", "interrupted", now=first + timedelta(seconds=40))

    later = first + timedelta(minutes=5)
    state.record_phase(record, "stack", now=later)
    state.record_phase(record, "stack", "done", now=later)
    state.record_phase(record, "hosts", now=later)
    state.record_phase(record, "hosts", "done", now=later + timedelta(seconds=10))

    assert (record.phases["stack"].started, record.phases["stack"].finished) == (first, first + timedelta(seconds=30))
    assert record.phases["hosts"].started == first + timedelta(seconds=30)
    assert record.phases["hosts"].outcome == "done"
