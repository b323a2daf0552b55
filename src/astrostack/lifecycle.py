"""A cluster's life: up (create, wait, roll back on failure), down, scale,
rollback. Each flow holds the cluster's lock and keeps its state record true
at every step, so an interrupted command leaves a record that `status` and
`down` can act on.
"""

from __future__ import annotations

import shutil
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from astrostack import cloud, images, keys, marks, paths, state
from astrostack import stack as heat_stack
from astrostack.cleanup import OpenStackSweeper, SweepResult, sweep
from astrostack.cluster import dask as task_queue
from astrostack.cluster import mpi as mpi_mode
from astrostack.cluster import registry as cluster_registry
from astrostack.cluster import swarm
from astrostack.cluster.access import (
    NFS_ADDRESS_OUTPUT,
    SshAccess,
    StackManagerAccess,
    forget_host_keys,
    worker_addresses,
)
from astrostack.cluster.probe import cluster_snapshot, liveness, probe_for
from astrostack.errors import (
    AstrostackError,
    CloudError,
    DeployFailed,
    InvalidInput,
    PrecheckFailed,
    UnknownCluster,
    WaitTimeout,
)
from astrostack.monitor import (
    HOSTS,
    NODES,
    STACK,
    Deadlines,
    MonitorError,
    Observation,
    PhaseEvent,
    Targets,
    wait_until_ready,
)
from astrostack.precheck import precheck
from astrostack.probe import DeploymentProbe, NovaServerWatch, nova_console_logs, silent_host_story
from astrostack.render import render, stack_tags
from astrostack.spec import ClusterSpec, Mode, server_name, spec_from_dict, worker_host
from astrostack.stack import DeleteFailed, Heat, StackRef

EventSink = Callable[[PhaseEvent], None]
DELETE_RETRIES = 3
SCALE_PREFIX = "scale-"  # a scale's phases in the record, beside up's
DEFAULT_DELETE_S = 600
OUTAGE_RETRY_S = 5.0


@dataclass
class Runtime:
    """What the flows need from the outside world, injectable for tests."""

    connect: Callable[[str], Any] = cloud.connect
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    on_event: Optional[EventSink] = None
    note: Callable[[str], None] = lambda message: None


# up -------------------------------------------------------------------------


def up(spec: ClusterSpec, *, keep_on_failure: Optional[bool] = None, runtime: Runtime | None = None) -> state.ClusterRecord:
    """Create the cluster and wait until hosts and nodes are ready.

    Re-running on an existing cluster resumes the wait or reports it ready;
    it never creates a twin. On failure: evidence first, then roll back
    (unless kept); raises :class:`DeployFailed` (exit 3 or 4).
    """
    runtime = runtime or Runtime()
    keep = (spec.on_failure.value == "keep") if keep_on_failure is None else keep_on_failure
    with state.cluster_lock(spec.name):
        heat = Heat(runtime.connect(spec.cloud), sleep=runtime.sleep)
        record, ref = _resume_or_start(spec, heat, runtime)
        if record.status == "ready":
            runtime.note(f"cluster {spec.name} is already up")
            return record
        return _wait_and_settle(spec, heat, ref, record, keep, runtime)


def _resume_or_start(spec: ClusterSpec, heat: Heat, runtime: Runtime) -> tuple[state.ClusterRecord, StackRef]:
    existing = state.load(spec.name) if state.exists(spec.name) else None
    live = heat.find(spec.name)
    if existing and live and existing.stack_id is None and existing.status == "creating":
        # The create request went out but its answer was lost (an outage, Ctrl-C): adopt the stack.
        existing.stack_id = live.id
        state.save(existing)
    if existing and live and existing.stack_id == live.id:
        if existing.spec_hash != spec.spec_hash():
            raise InvalidInput(
                f"cluster {spec.name} exists with another spec (hash {existing.spec_hash}); "
                f"use `astrostack scale` or `astrostack down {spec.name}` first"
            )
        if existing.status == "failed":
            raise InvalidInput(f"cluster {spec.name} failed and was kept for debugging; run `astrostack down {spec.name}` first")
        if existing.status != "ready":
            runtime.note(f"resuming the wait for cluster {spec.name} (stack {live.id})")
        return existing, live
    if live:
        raise InvalidInput(f"a stack named {spec.name} exists that astrostack did not record; pick another name or delete it")
    return _create(spec, heat, runtime)


def _create(spec: ClusterSpec, heat: Heat, runtime: Runtime) -> tuple[state.ClusterRecord, StackRef]:
    record = state.ClusterRecord.from_spec(spec, stack_name=spec.name)
    forget_host_keys(spec.name)  # a floating IP may be recycled: never trust an old key for it
    public_key = ""
    if not spec.ssh.keypair:
        key_file, public_key = keys.ensure_cluster_key(spec.name)
        record.ssh_private_key_path = str(key_file)
    prepare_cloud(spec, heat, record, runtime)
    shutil.rmtree(render_dir(spec.name), ignore_errors=True)  # astrostack's own folder: rendered afresh
    rendered = render(spec, render_dir(spec.name), ssh_public_key=public_key)
    state.record_phase(record, "stack")
    state.save(record)
    minutes = max(1, -(-(spec.timeouts.stack_create + spec.timeouts.hosts_ready) // 60))
    ref = heat.create(spec.name, rendered, tags=stack_tags(spec), timeout_mins=minutes)
    record.stack_id = ref.id
    state.save(record)
    runtime.note(f"stack {ref.name} ({ref.id}) created")
    return record, ref


def render_dir(name: str) -> Path:
    return paths.state_dir() / f"{name}.render"


def prepare_cloud(spec: ClusterSpec, heat: Heat, record: state.ClusterRecord, runtime: Runtime) -> None:
    """Pre-checks before anything is created, and the application image where the hosts pull it."""
    precheck(spec, heat.conn)
    image = spec.application.image
    if spec.registry.url:
        reference, digest = images.ensure_in_registry(image, spec.registry.url, note=runtime.note)
        record.image_digests[reference] = digest
    elif not images.has_registry_host(image) and not images.image_exists(image):
        raise PrecheckFailed(f"application.image: {image} is not on this machine, so it cannot be pushed into the "
                             "cluster's registry", hint="build or pull it here, or set registry.url to a registry "
                                                       "that has it")


def _wait_and_settle(spec: ClusterSpec, heat: Heat, ref: StackRef, record: state.ClusterRecord, keep: bool,
                     runtime: Runtime) -> state.ClusterRecord:
    manager = manager_access(spec, heat, ref, record)
    probe = DeploymentProbe(heat, ref, servers=NovaServerWatch(heat.conn, spec.name),
                            nodes=probe_for(spec, manager), host_ids=spec.host_names(), clock=runtime.clock)
    targets, deadlines = Targets(spec.hosts, spec.nodes), Deadlines.from_spec(spec)
    wait = dict(clock=runtime.clock, sleep=runtime.sleep, on_event=_recording(record, runtime.on_event))
    try:
        wait_until_ready(probe, targets, deadlines, phases=(STACK, HOSTS), **wait)
        if not spec.registry.url:
            _publish_into_cluster(spec, heat, ref, manager, record, runtime)
        readiness = wait_until_ready(probe, targets, deadlines, phases=(NODES,), **wait)
    except MonitorError as exc:
        raise _settle_failure(spec, heat, ref, record, keep, exc, runtime) from None
    except Exception as exc:  # a bug must not leave a half-built stack behind either
        failure = MonitorError(f"internal error while waiting: {type(exc).__name__}: {exc} (a bug; please report it)",
                               phase=_current_phase(record), observation=Observation())
        failure.__cause__ = exc
        raise _settle_failure(spec, heat, ref, record, keep, failure, runtime) from exc
    except KeyboardInterrupt:
        record.status = "creating"
        phase = _current_phase(record)
        if phase in record.phases and record.phases[phase].finished is None:
            state.record_phase(record, phase, "interrupted")
        state.save(record)
        runtime.note(f"interrupted: stack {ref.name} exists; `astrostack status {spec.name}` or `astrostack down {spec.name}`")
        raise
    record.status = "ready"
    record.manager_address = manager.access().address
    record.hosts_ready = readiness.observation.hosts_signalled if readiness.observation else spec.hosts
    record.nodes_ready = readiness.observation.nodes_ready if readiness.observation else spec.nodes
    state.save(record)
    return record


def _publish_into_cluster(spec: ClusterSpec, heat: Heat, ref: StackRef, manager: StackManagerAccess,
                          record: state.ClusterRecord, runtime: Runtime) -> None:
    """The application image into the cluster's own registry (its NFS VM), through the
    manager; a failure is the nodes phase's."""
    try:
        address = heat.outputs(ref).get(NFS_ADDRESS_OUTPUT)
        if not address:
            raise CloudError(f"stack {ref.name} has no {NFS_ADDRESS_OUTPUT} output")
        reference, digest = cluster_registry.publish(spec.application.image, manager.access(), str(address),
                                                     note=runtime.note)
    except AstrostackError as exc:
        raise MonitorError(f"nodes phase failed: the image could not reach the cluster's registry: {exc}",
                           phase=NODES, observation=Observation()) from None
    record.image_digests[reference] = digest
    state.save(record)


def _current_phase(record: state.ClusterRecord) -> str:
    """The phase under way: the last one started and not finished."""
    running = [name for name, entry in record.phases.items() if entry.finished is None]
    return running[-1] if running else "nodes"


def manager_access(spec: ClusterSpec, heat: Heat, ref: StackRef, record: state.ClusterRecord) -> StackManagerAccess:
    """SSH to the manager, at the floating IP the stack reports once it has one."""
    known = record.manager_address

    def address() -> Optional[str]:
        return known or heat.outputs(ref).get("manager_floating_ip")

    return StackManagerAccess(spec.name, spec.servers.user, record.ssh_private_key_path, address)


def _recording(record: state.ClusterRecord, sink: Optional[EventSink], prefix: str = "") -> EventSink:
    """Persist phase boundaries in the record (as PREFIX + phase), then pass the event on."""

    def on_event(event: PhaseEvent) -> None:
        if event.kind in ("start", "done", "failed", "timeout"):
            state.record_phase(record, prefix + event.phase, None if event.kind == "start" else event.kind)
            record.hosts_ready = event.hosts_signalled
            record.nodes_ready = event.nodes_ready
            state.save(record)
        if sink:
            sink(event)

    return on_event


def _settle_failure(spec: ClusterSpec, heat: Heat, ref: StackRef, record: state.ClusterRecord, keep: bool,
                    error: MonitorError, runtime: Runtime) -> DeployFailed:
    runtime.note(f"{error.phase} phase failed: collecting evidence, then {'keeping' if keep else 'rolling back'}")
    evidence = collect_evidence(spec, heat, ref, record, error)
    message = error.message + silent_hosts_said(spec.name, error, evidence / "consoles")
    record.evidence_dir = str(evidence)
    if keep:
        record.status = "failed"
        state.save(record)
        return DeployFailed(f"{message}; kept for debugging", phase=error.phase, evidence=str(evidence),
                            rolled_back=False, hint=f"evidence in {evidence}; `astrostack down {spec.name}` when done")
    record.status = "deleting"
    state.save(record)
    try:
        teardown(spec.name, spec.cloud, heat, ref, deadline_s=spec.timeouts.delete, runtime=runtime)
    except AstrostackError as exc:
        record.status = "failed"
        state.save(record)
        return DeployFailed(f"{message}; rollback failed too: {exc}", phase=error.phase,
                            evidence=str(evidence), rolled_back=False,
                            hint=f"evidence in {evidence}; retry with `astrostack down {spec.name} --force`")
    record.status = "rolled_back"
    record.stack_id = None
    state.save(record)
    return DeployFailed(f"{message}; rolled back", phase=error.phase, evidence=str(evidence),
                        rolled_back=True, hint=f"evidence in {evidence}")


# evidence --------------------------------------------------------------------


def collect_evidence(spec: ClusterSpec, heat: Heat, ref: StackRef, record: state.ClusterRecord,
                     error: Optional[BaseException], *, with_cluster: bool = False) -> Path:
    """Everything that explains a failure (or, for a benchmark, how a success
    went), written before anything is deleted. Each piece is best effort: a
    missing piece is noted, never fatal, so that evidence can never stop the
    rollback that follows. What the cluster itself says is asked for when the
    nodes phase failed (the hosts are up) or WITH_CLUSTER."""
    folder = state.evidence_dir(spec.name, time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6])
    notes: list[str] = []
    if error is not None and error.__cause__ is not None:
        _note_failure(notes, "traceback.txt", lambda: (folder / "traceback.txt").write_text(
            "".join(traceback.format_exception(error.__cause__))))
    pieces: dict[str, Callable[[], Any]] = {
        "stack.json": lambda: heat.show(ref, outputs=True),
        "events.json": lambda: heat.events(ref),
        "resources.json": lambda: heat.resources(ref),
        "failed_resources.json": lambda: heat_stack.failed_resources(heat.resources(ref)),
        "host_signals.json": lambda: heat_stack.decoded_signal_data(heat.host_signals(heat.resources(ref))),
    }
    for filename, fetch in pieces.items():
        _note_failure(notes, filename, lambda fetch=fetch, filename=filename: heat_stack.write_json(folder / filename, fetch()))
    _note_failure(notes, "consoles", lambda: _collect_consoles(spec, heat, folder))
    if with_cluster or str(getattr(error, "phase", "")).endswith(NODES):  # the hosts are up
        _note_failure(notes, "cluster.txt", lambda: (folder / "cluster.txt").write_text(
            cluster_snapshot(spec, manager_access(spec, heat, ref, record).access())))
    summary = {
        "cluster": spec.name,
        "stack": ref.id,
        "error": str(error) if error else None,
        "phase": getattr(error, "phase", None),
        # the monitor's last look, e.g. why the last smoke test was not ok
        "last_seen": getattr(getattr(error, "observation", None), "last_event", None),
        "phases": {k: v.model_dump(mode="json") for k, v in record.phases.items()},
        "missing": notes,
    }
    _note_failure(notes, "summary.json", lambda: heat_stack.write_json(folder / "summary.json", summary))
    return folder


# How Heat words a wait condition that timed out (a FAILURE signal is "WaitConditionFailure").
HEAT_WAIT_TIMEOUT = "WaitConditionTimeout"


def silent_hosts_said(cluster: str, error: MonitorError, consoles: Path, shown: int = 3) -> str:
    """'; HOST: what its console shows' for the first hosts that ended the hosts phase
    without a word: never signalled, or only timed out by Heat's wait condition."""
    told = {host for host, why in error.observation.host_failures if HEAT_WAIT_TIMEOUT not in why}
    missing = [host for host in error.observation.hosts_missing if host not in told]
    if error.phase != HOSTS or not missing or not consoles.is_dir():
        return ""
    said = []
    for host in missing[:shown]:
        log = console_file(consoles, server_name(cluster, host))
        said.append(f"{host}: {silent_host_story(log.read_text(errors='replace') if log.exists() else None)}")
    more = f" (and {len(missing) - shown} more silent)" if len(missing) > shown else ""
    return "; " + "; ".join(said) + more


def _note_failure(notes: list[str], piece: str, write: Callable[[], Any]) -> None:
    """Write one piece of evidence; any failure (cloud, disk, a bug) becomes a note."""
    try:
        write()
    except Exception as exc:  # evidence is best effort by design
        notes.append(f"{piece}: {type(exc).__name__}: {exc}")


def _collect_consoles(spec: ClusterSpec, heat: Heat, folder: Path) -> None:
    consoles = folder / "consoles"
    consoles.mkdir(parents=True, exist_ok=True)
    for server, text in nova_console_logs(spec.name, heat.conn).items():
        console_file(consoles, server).write_text(text)


def console_file(consoles: Path, server: str) -> Path:
    """Where the evidence keeps SERVER's console output."""
    return consoles / f"{server}.log"


# status ---------------------------------------------------------------------


def status(name: str, *, cloud_name: Optional[str] = None, quick: bool = False,
           runtime: Runtime | None = None) -> dict[str, Any]:
    """The record, what the cloud says now, and (unless QUICK) a live look at the cluster:
    its servers, its hosts and its nodes as they are. The cloud is the truth: without a
    readable record, the cluster is found by its stack (``recorded: false``)."""
    runtime = runtime or Runtime()
    found = locate(name, cloud_name, runtime)
    report: dict[str, Any] = {"name": name, "cloud": found.cloud, "recorded": found.record is not None}
    if found.record:
        report.update(state.dump(found.record))
        report.pop("spec", None)
        for entry in report["phases"].values():
            entry["seconds"] = _seconds(entry)
    if found.problem:
        report["record_problem"] = found.problem.message
    report["stack_status"] = found.stack_status
    if not quick and found.ref is not None and found.spec is not None:
        report["live"] = live_view(found, runtime)
    return report


@dataclass
class Located:
    """Where a cluster is: its record (if readable), cloud, stack and spec."""

    name: str
    cloud: str
    heat: Optional[Heat]
    ref: Optional[StackRef]
    record: Optional[state.ClusterRecord]
    problem: Optional[state.StateCorrupt]
    stack_status: str

    @property
    def spec(self) -> Optional[ClusterSpec]:
        return spec_from_dict(self.record.spec) if self.record else None


def locate(name: str, cloud_name: Optional[str], runtime: Runtime) -> Located:
    """Find NAME from its record, else in CLOUD_NAME (default: OS_CLOUD or local) by its stack."""
    record, problem = state.try_load(name)
    where = cloud_name or (record.cloud if record else cloud.default_cloud())
    try:
        heat = Heat(runtime.connect(where), sleep=runtime.sleep)
        ref = heat.find(name)
    except AstrostackError as exc:
        if record is None:
            raise
        return Located(name, where, None, None, record, problem, f"UNKNOWN ({exc})")
    if ref is not None and record is None and marks.cluster_tag(name) not in heat.tags(ref):
        raise InvalidInput(f"stack {name} in cloud {where} is not an astrostack cluster (no tag {marks.cluster_tag(name)})")
    if ref is None and record is None and not problem:
        leftovers = sweep(OpenStackSweeper(heat.conn), name, dry_run=True).found
        if not leftovers:
            raise UnknownCluster(f"no cluster {name} here or in cloud {where}: no record, no stack, "
                                 "no resource with its mark", hint="`astrostack list` shows the clusters")
    status = heat.status(ref)[0] if ref else "GONE"
    return Located(name, where, heat, ref, record, problem, status)


def live_view(found: Located, runtime: Runtime) -> dict[str, Any]:
    """Servers, hosts and nodes as they are now (no smoke test): ``healthy`` or not, and why."""
    spec, record = found.spec, found.record
    assert spec is not None and record is not None and found.heat is not None and found.ref is not None
    dead = NovaServerWatch(found.heat.conn, spec.name).dead_servers()
    try:
        view = liveness(spec, manager_access(spec, found.heat, found.ref, record))
    except AstrostackError as exc:
        return {"healthy": False, "dead_servers": dead, "detail": f"cannot look at the cluster: {exc}"}
    healthy = not dead and view.hosts_ready >= spec.hosts and view.nodes_ready >= spec.nodes
    return {"healthy": healthy, "hosts_ready": view.hosts_ready, "nodes_ready": view.nodes_ready,
            "dead_servers": dead, "detail": view.detail}


def _seconds(entry: dict[str, Any]) -> Optional[float]:
    from datetime import datetime

    if not (entry.get("started") and entry.get("finished")):
        return None
    started = datetime.fromisoformat(str(entry["started"]))
    finished = datetime.fromisoformat(str(entry["finished"]))
    return round((finished - started).total_seconds(), 1)


# down -----------------------------------------------------------------------


def teardown(name: str, cloud_name: str, heat: Heat, ref: Optional[StackRef], *, deadline_s: float,
             runtime: Runtime, force: bool = False) -> SweepResult:
    """Delete the stack (retrying DELETE_FAILED), then sweep what is left by tag."""
    if ref is not None:
        _delete_stack(name, cloud_name, heat, ref, deadline_s, runtime, force)
    result = sweep(OpenStackSweeper(heat.conn), name)
    if result.failed:
        item, reason = result.failed[0]
        raise CloudError(f"{len(result.failed)} leftover(s) of {name} could not be deleted, first {item.kind} {item.name}: {reason}")
    return result


def _delete_stack(name: str, cloud_name: str, heat: Heat, ref: StackRef, deadline_s: float, runtime: Runtime,
                  force: bool) -> None:
    """Delete the stack within DEADLINE_S: DELETE_FAILED is retried (after a sweep
    with FORCE), and an outage of the cloud is ridden out until the deadline."""
    deadline = runtime.clock() + deadline_s
    failures = 0
    while True:
        try:
            heat.delete(ref)
            heat.wait_gone(ref, max(1.0, deadline - runtime.clock()), clock=runtime.clock,
                           on_wait=lambda status, seconds: runtime.note(_deleting_note(name, status, seconds)))
            return
        except DeleteFailed as exc:
            reason = exc.reason
        except CloudError as exc:
            if not exc.transient or runtime.clock() >= deadline:
                raise
            runtime.note(f"deleting stack {name}: the cloud does not answer ({exc.message}); "
                         f"retrying for {deadline - runtime.clock():.0f} s more")
            runtime.sleep(OUTAGE_RETRY_S)
            continue
        failures += 1
        runtime.note(f"delete of stack {name} failed (try {failures}/{DELETE_RETRIES}): {reason}")
        if failures >= DELETE_RETRIES:
            raise CloudError(f"stack {name} is DELETE_FAILED after {DELETE_RETRIES} tries: {reason}",
                             hint=f"`astrostack down {name} --force`")
        if force:
            # Servers first: they hold ports and volume attachments Heat could not release.
            sweep(OpenStackSweeper(heat.conn), name)


def _deleting_note(name: str, status: str, seconds: float) -> str:
    note = f"deleting stack {name}: {status} for {seconds:.0f} s"
    if status.startswith("CREATE_") or status.startswith("UPDATE_"):
        # Heat lets the tasks of a failed action run on for its error_wait_time (240 s by default).
        note += " (Heat first lets the failed action's tasks end: up to its error_wait_time)"
    return note


def down(name: str, *, cloud_name: Optional[str] = None, force: bool = False,
         runtime: Runtime | None = None) -> SweepResult:
    """Delete a cluster and verify nothing is left. Without a readable record, the
    cluster is found in the cloud by its stack and its mark, and deleted all the same."""
    runtime = runtime or Runtime()
    with state.cluster_lock(name):
        found = locate(name, cloud_name, runtime)
        if found.heat is None:
            raise CloudError(f"cannot delete {name}: {found.stack_status}")
        if found.problem:
            runtime.note(f"{found.problem.message}: deleting what the cloud has of {name}")
        if found.record:
            found.record.status = "deleting"
            state.save(found.record)
        deadline = found.spec.timeouts.delete if found.spec else DEFAULT_DELETE_S
        try:
            result = teardown(name, found.cloud, found.heat, found.ref, deadline_s=deadline, runtime=runtime,
                              force=force)
        except KeyboardInterrupt:
            runtime.note(f"interrupted: Heat goes on deleting {name}; `astrostack down {name}` again finishes "
                         "the job and checks that nothing is left")
            raise
        state.delete(name)
        keys.forget_cluster_key(name)
        forget_host_keys(name)
        return result


def list_clusters(runtime: Runtime | None = None) -> list[dict[str, Any]]:
    """Every recorded cluster, every unreadable record (named), and clusters the clouds
    have (stacks with the astrostack tag) that no record knows."""
    runtime = runtime or Runtime()
    records, problems = state.scan()
    rows: list[dict[str, Any]] = [
        {"name": r.name, "cloud": r.cloud, "status": r.status, "hosts": r.hosts_target, "nodes": r.nodes_target,
         "stack_id": r.stack_id, "recorded": True} for r in records]
    rows += [{"name": Path(p.message.split(":", 1)[0]).stem, "status": "unreadable", "problem": p.message,
              "recorded": True} for p in problems]
    known = {row["name"] for row in rows}
    for cloud_name in sorted({r.cloud for r in records} | {cloud.default_cloud()}):
        try:
            stacks = Heat(runtime.connect(cloud_name), sleep=runtime.sleep).list_stacks(tags=marks.GENERIC_TAG)
        except AstrostackError as exc:
            runtime.note(f"cloud {cloud_name} not asked: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
            continue
        rows += [{"name": s["stack_name"], "cloud": cloud_name, "status": "unrecorded", "stack_id": s["id"],
                  "stack_status": s.get("stack_status"), "recorded": False}
                 for s in stacks if s["stack_name"] not in known]
    return rows


def sweep_cloud(cloud_name: str, *, dry_run: bool, runtime: Runtime | None = None) -> SweepResult:
    """Leftovers of every cluster that has no live stack in CLOUD_NAME (deleted unless DRY_RUN)."""
    runtime = runtime or Runtime()
    heat = Heat(runtime.connect(cloud_name), sleep=runtime.sleep)
    live = {s["stack_name"] for s in heat.list_stacks() if s.get("stack_status") != "DELETE_COMPLETE"}
    return sweep(OpenStackSweeper(heat.conn), None, live_clusters=live, dry_run=dry_run)


# scale and rollback -------------------------------------------------------------


def scale(name: str, hosts: int, nodes: Optional[int] = None, *, runtime: Runtime | None = None) -> state.ClusterRecord:
    """Resize a ready cluster: a deployment like `up`. The stack update, then every
    host signalled, then every node running and the smoke test passed; on failure,
    evidence and a return to the old size. Workers removed from a Swarm are
    drained first and removed from it after."""
    runtime = runtime or Runtime()
    with state.cluster_lock(name):
        record = state.load(name)
        if record.status != "ready":
            raise InvalidInput(f"cluster {name} is {record.status}, not ready: `astrostack status {name}`")
        old = spec_from_dict(record.spec)
        new = resized(old, hosts, nodes)
        heat = Heat(runtime.connect(new.cloud), sleep=runtime.sleep)
        ref = _stack_of(name, heat, record)
        manager = manager_access(old, heat, ref, record)
        record.previous_spec, record.status = record.spec, "scaling"
        state.save(record)
        try:
            _resize(old, new, heat, ref, manager, record, runtime)
        except MonitorError as exc:
            raise _settle_scale_failure(old, new, heat, ref, manager, record, exc, runtime) from None
        except KeyboardInterrupt:
            runtime.note(f"interrupted: the stack update of {name} may go on; `astrostack status {name}` tells, "
                         f"`astrostack rollback {name}` returns to {old.hosts} hosts")
            raise
        _accept(record, new)
        return record


def resized(old: ClusterSpec, hosts: int, nodes: Optional[int]) -> ClusterSpec:
    """OLD with HOSTS hosts and NODES nodes (default: the same nodes per host; a task
    queue's nodes follow its worker VMs)."""
    data = old.model_dump(mode="json")
    if old.is_task_queue:
        if nodes is not None:
            raise InvalidInput(f"--nodes: cluster {old.name} is a task queue: its nodes are its Dask worker "
                               "processes, (hosts - 1) x task_queue.processes; give --hosts only")
        data.pop("nodes")
        data.update(hosts=hosts)
        return spec_from_dict(data, source="scale")
    data.update(hosts=hosts, nodes=nodes if nodes is not None else max(hosts, old.nodes * hosts // old.hosts))
    return spec_from_dict(data, source="scale")


def _stack_of(name: str, heat: Heat, record: state.ClusterRecord) -> StackRef:
    ref = heat.find(name)
    if ref is None:
        raise InvalidInput(f"cluster {name} has no stack (status {record.status}); run `astrostack up` first")
    return ref


def _resize(old: ClusterSpec, new: ClusterSpec, heat: Heat, ref: StackRef, manager: StackManagerAccess,
            record: state.ClusterRecord, runtime: Runtime, *, reinstate: bool = False) -> None:
    """Update the stack to NEW's size and wait, as `up` does, until NEW is ready.
    REINSTATE: the added hosts are a failed scale-down's, whose Dask workers were retired."""
    removed = [server_name(old.name, worker_host(i)) for i in range(new.workers, old.workers)]
    if removed and old.is_task_queue:
        runtime.note(f"retiring the Dask workers of {', '.join(removed)} (their data moves to the other workers)")
        task_queue.retire(manager, _workers_through(heat, ref, manager, range(new.workers, old.workers)))
    elif removed and old.mode is Mode.swarm:
        runtime.note(f"draining {', '.join(removed)} (their tasks move to the other hosts)")
        swarm.drain(manager, removed)
    minutes = max(1, -(-(new.timeouts.stack_create + new.timeouts.hosts_ready) // 60))
    before = heat.show(ref).get("updated_time")
    heat.update_parameters(ref, {"worker_count": new.workers}, timeout_mins=minutes)
    heat.wait_update_started(ref, before, deadline_s=60, clock=runtime.clock)
    probe = DeploymentProbe(heat, ref, servers=NovaServerWatch(heat.conn, new.name),
                            nodes=probe_for(new, manager), host_ids=new.host_names(), clock=runtime.clock)
    targets = Targets(new.hosts, new.nodes, stack_status="UPDATE_COMPLETE")
    for phase in (STACK, HOSTS, NODES):  # each scale is a deployment of its own
        record.phases.pop(SCALE_PREFIX + phase, None)
    wait = dict(clock=runtime.clock, sleep=runtime.sleep,
                on_event=_recording(record, runtime.on_event, prefix=SCALE_PREFIX))
    wait_until_ready(probe, targets, Deadlines.from_spec(new), phases=(STACK, HOSTS), **wait)
    _follow_hosts(old, new, manager, [worker_host(i) for i in range(new.workers, old.workers)], removed)
    if reinstate and new.is_task_queue:
        task_queue.reinstate(_workers_through(heat, ref, manager, range(old.workers, new.workers)))
    wait_until_ready(probe, targets, Deadlines.from_spec(new), phases=(NODES,), **wait)


def _workers_through(heat: Heat, ref: StackRef, manager: StackManagerAccess,
                     indexes: range) -> dict[str, SshAccess]:
    """SSH to worker-N (N in INDEXES, those the stack has), through the manager."""
    addresses = worker_addresses(heat.outputs(ref))
    return {worker_host(i): manager.access().behind(addresses[i])
            for i in indexes if i < len(addresses) and addresses[i]}


def _follow_hosts(old: ClusterSpec, new: ClusterSpec, manager: StackManagerAccess, removed_hosts: list[str],
                  removed_nodes: list[str]) -> None:
    """The containers follow the hosts: Swarm forgets removed nodes and the worker
    service takes the new count; MPI mode and a task queue forget removed hosts' reports
    (a task queue's new workers start their Dask worker as they boot)."""
    if new.mode is Mode.swarm and not new.is_task_queue:
        swarm.forget_nodes(manager, removed_nodes)
        swarm.scale_workers(new, manager)
    else:
        mpi_mode.forget_hosts(new, manager, removed_hosts)


def _accept(record: state.ClusterRecord, new: ClusterSpec) -> None:
    record.spec = new.model_dump(mode="json")
    record.spec_hash = new.spec_hash()
    record.hosts_target, record.nodes_target = new.hosts, new.nodes
    record.hosts_ready, record.nodes_ready = new.hosts, new.nodes
    record.status = "ready"
    state.save(record)


def _settle_scale_failure(old: ClusterSpec, new: ClusterSpec, heat: Heat, ref: StackRef, manager: StackManagerAccess,
                          record: state.ClusterRecord, error: MonitorError, runtime: Runtime) -> DeployFailed:
    """Evidence first, then back to the old size (itself waited for like a deployment)."""
    evidence = collect_evidence(new, heat, ref, record, error)
    message = error.message + silent_hosts_said(new.name, error, evidence / "consoles")
    record.evidence_dir = str(evidence)
    runtime.note(f"scale of {new.name} to {new.hosts} hosts failed: returning to {old.hosts} hosts")
    try:
        _end_update_under_way(heat, ref, new, runtime)
        _resize(new, old, heat, ref, manager, record, runtime, reinstate=new.workers < old.workers)
    except (MonitorError, AstrostackError) as exc:
        record.status = "failed"
        state.save(record)
        return DeployFailed(f"scale failed: {message}; returning to {old.hosts} hosts failed too: {exc}",
                            phase=error.phase, evidence=str(evidence), rolled_back=False,
                            hint=f"evidence in {evidence}; `astrostack status {new.name}`")
    _accept(record, old)
    return DeployFailed(f"scale failed: {message}; back to {old.hosts} hosts, {old.nodes} nodes",
                        phase=error.phase, evidence=str(evidence), rolled_back=True, hint=f"evidence in {evidence}")


def _end_update_under_way(heat: Heat, ref: StackRef, spec: ClusterSpec, runtime: Runtime) -> None:
    """A stack update still running (a scale that failed while Heat worked on) is cancelled,
    and Heat's rollback of it waited for: Heat refuses another update until then (409)."""
    status, _ = heat.status(ref)
    if status == "UPDATE_IN_PROGRESS":
        runtime.note(f"cancelling the stack update of {spec.name} still under way (Heat rolls it back)")
        heat.cancel_update(ref)
        _wait_for_update(heat, ref, spec.timeouts.stack_create, runtime)


def rollback(name: str, *, runtime: Runtime | None = None) -> state.ClusterRecord:
    """Return a cluster to its size before the last scale (a deployment like
    `scale`); a stack update still under way is cancelled first (Heat rolls it back)."""
    runtime = runtime or Runtime()
    with state.cluster_lock(name):
        record = state.load(name)
        current = spec_from_dict(record.spec)
        heat = Heat(runtime.connect(current.cloud), sleep=runtime.sleep)
        ref = _stack_of(name, heat, record)
        _end_update_under_way(heat, ref, current, runtime)
        if record.previous_spec is None:
            raise InvalidInput(f"cluster {name} has not been scaled: nothing to roll back to")
        previous = spec_from_dict(record.previous_spec)
        manager = manager_access(current, heat, ref, record)
        record.status = "scaling"
        state.save(record)
        try:
            _resize(current, previous, heat, ref, manager, record, runtime)
        except MonitorError as exc:
            raise _settle_scale_failure(current, previous, heat, ref, manager, record, exc, runtime) from None
        _accept(record, previous)
        record.previous_spec = None
        state.save(record)
        return record


def _wait_for_update(heat: Heat, ref: StackRef, deadline_s: float, runtime: Runtime) -> str:
    deadline = runtime.clock() + deadline_s
    status = "UPDATE_IN_PROGRESS"
    while runtime.clock() < deadline:
        status, _ = heat.status(ref)
        if not status.endswith("_IN_PROGRESS"):
            return status
        runtime.sleep(min(2.0, max(0.0, deadline - runtime.clock())))
    raise WaitTimeout(f"stack {ref.name} still {status} after {deadline_s:.0f} s",
                      hint=f"`astrostack rollback {ref.name}`")
