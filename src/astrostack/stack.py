"""The Heat side of a cluster: create, look at, update and delete its stack.

Everything goes through the openstacksdk orchestration proxy of a
:func:`astrostack.cloud.connect` connection; transient API errors (5xx, 429,
connection reset) are retried with jitter by :mod:`astrostack.retry`. The
monitor's probe makes a fixed number of requests per poll, whatever the
number of hosts: the stack, its resources (nested included, one list), and
the hosts' wait-condition handle.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from openstack import exceptions as os_exc

from astrostack.cloud import local_cloud_hint, one_line
from astrostack.errors import CloudError, CloudUnreachable, NotFound, WaitTimeout
from astrostack.render import Rendered
from astrostack.retry import SDK_ERRORS, call_with_retry
from astrostack.spec import MANAGER_HOST, worker_host

WAIT_CONDITION = "OS::Heat::WaitCondition"
WAIT_CONDITION_HANDLE = "OS::Heat::WaitConditionHandle"
# The wait condition of each host, by resource name (workers' are in lib/worker.yaml,
# one per ResourceGroup member: its parent resource is the member's index).
MANAGER_WAIT = "manager_wait"
NFS_WAIT = "nfs_wait"
WORKER_WAIT = "wait"
# Resource statuses ending in _COMPLETE that do not mean "created": not started yet, gone.
NOT_DONE = ("INIT_COMPLETE", "DELETE_COMPLETE")
# Secrets that must never be written into evidence.
SECRET_KEYS = ("token", "private_key", "secret", "password")


@dataclass(frozen=True)
class StackRef:
    name: str
    id: str

    @property
    def path(self) -> str:
        return f"/stacks/{self.name}/{self.id}"


# A stack asked to be deleted that shows another settled status this long after is
# not being deleted (the request is sent again, as after DELETE_FAILED).
DELETE_TAKEN_WITHIN_S = 10.0


class Heat:
    """A thin, retrying client of one cloud's orchestration API."""

    def __init__(self, conn: Any, *, sleep: Callable[[float], None] = time.sleep):
        self.conn = conn
        self.sleep = sleep
        self.requests = 0

    # raw JSON calls -------------------------------------------------------

    @property
    def api(self) -> Any:
        """The orchestration proxy. Its first use signs in and looks up Heat's
        endpoint, so it is only touched inside retries and :func:`_heat_errors`."""
        return self.conn.orchestration

    @property
    def cloud_name(self) -> Optional[str]:
        """The clouds.yaml entry the connection was made from (None if it has no name)."""
        return getattr(getattr(self.conn, "config", None), "name", None)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        def once() -> Any:
            self.requests += 1
            response = getattr(self.api, method)(path, **kwargs)
            os_exc.raise_from_response(response)
            return response

        with _heat_errors(f"{method.upper()} {path}", self.cloud_name):
            return call_with_retry(once, sleep=self.sleep)

    def get_json(self, path: str, **params: Any) -> dict[str, Any]:
        response = self._call("get", path, params=params or None)
        return response.json() if response.content else {}

    # stacks ---------------------------------------------------------------

    def find(self, name: str) -> Optional[StackRef]:
        """The live stack called NAME (a deleted one counts as gone)."""
        try:
            body = self.get_json(f"/stacks/{name}", resolve_outputs="false")
        except NotFound:
            return None
        stack = body.get("stack", body)
        if stack.get("stack_status") == "DELETE_COMPLETE":
            return None
        return StackRef(stack["stack_name"], stack["id"])

    def show(self, ref: StackRef, *, outputs: bool = False) -> dict[str, Any]:
        """The stack; its outputs only when asked (Heat resolves each, asking Nova and
        Neutron for the attributes they name: most of a poll's time otherwise)."""
        return self.get_json(ref.path, **({} if outputs else {"resolve_outputs": "false"}))["stack"]

    def status(self, ref: StackRef) -> tuple[str, str]:
        stack = self.show(ref)
        return stack["stack_status"], stack.get("stack_status_reason") or ""

    def create(self, name: str, rendered: Rendered, *, tags: list[str], timeout_mins: int) -> StackRef:
        """POST the stack. Heat's own rollback is off: astrostack collects the
        evidence first and then deletes (see lifecycle)."""
        with _heat_errors("template files", self.cloud_name):
            body = stack_body(call_with_retry(lambda: self.api, sleep=self.sleep), rendered)
        body.update(
            stack_name=name,
            tags=",".join(tags),
            timeout_mins=timeout_mins,
            disable_rollback=True,
        )
        created = self._call("post", "/stacks", json=body).json()["stack"]
        return StackRef(name, created["id"])

    def update_parameters(self, ref: StackRef, parameters: dict[str, Any], *, timeout_mins: int) -> None:
        """PATCH update (existing template and files, new parameter values),
        rolled back by Heat if it fails."""
        body = {
            "parameters": parameters,
            "timeout_mins": timeout_mins,
            "disable_rollback": False,
        }
        self._call("patch", ref.path, json=body)

    def wait_update_started(self, ref: StackRef, before: Optional[str], *, deadline_s: float,
                            clock: Callable[[], float] = time.monotonic, poll_s: float = 0.5) -> None:
        """Return once Heat works on the update just asked (UPDATE_* newer than BEFORE),
        so that the status left by the previous action is never taken for this one's."""
        deadline = clock() + deadline_s
        while clock() < deadline:
            stack = self.show(ref)
            status = stack["stack_status"]
            if status == "UPDATE_IN_PROGRESS" or (status.startswith("UPDATE_") and stack.get("updated_time") != before):
                return
            self.sleep(poll_s)
        raise WaitTimeout(f"stack {ref.name}: Heat did not start the update within {deadline_s:.0f} s")

    def cancel_update(self, ref: StackRef) -> None:
        self._call("post", f"{ref.path}/actions", json={"cancel_update": None})

    def delete(self, ref: StackRef) -> None:
        try:
            self._call("delete", ref.path)
        except NotFound:
            return

    def tags(self, ref: StackRef) -> list[str]:
        return list(self.show(ref).get("tags") or [])

    def outputs(self, ref: StackRef) -> dict[str, Any]:
        stack = self.show(ref, outputs=True)
        return {o["output_key"]: o.get("output_value") for o in stack.get("outputs", [])}

    def parameters(self, ref: StackRef) -> dict[str, Any]:
        return dict(self.show(ref).get("parameters", {}))

    # resources, signals, events --------------------------------------------

    def resources(self, ref: StackRef, nested_depth: int = 2) -> list[dict[str, Any]]:
        return self.get_json(f"{ref.path}/resources", nested_depth=nested_depth).get("resources", [])

    def host_signals(self, resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """What every host's handle received, {host id: {status, reason, data}}: one
        request per host, for evidence only (the monitor reads the wait conditions)."""
        signals: dict[str, dict[str, Any]] = {}
        for handle in (r for r in resources if r.get("resource_type") == WAIT_CONDITION_HANDLE):
            path = _self_path(handle)
            if path is None:
                continue
            try:
                metadata = self.get_json(f"{path}/metadata").get("metadata", {}) or {}
            except NotFound:
                continue
            signals.update(metadata)
        return signals

    def events(self, ref: StackRef, limit: int = 200) -> list[dict[str, Any]]:
        return self.get_json(f"{ref.path}/events", limit=limit, sort_dir="desc", nested_depth=2).get("events", [])

    def list_stacks(self, tags: Optional[str] = None) -> list[dict[str, Any]]:
        params = {"tags": tags} if tags else {}
        return self.get_json("/stacks", **params).get("stacks", [])

    # waiting --------------------------------------------------------------

    def wait_gone(self, ref: StackRef, deadline_s: float, *,
                  clock: Callable[[], float] = time.monotonic, poll_s: float = 2.0,
                  on_wait: Optional[Callable[[str, float], None]] = None, say_every_s: float = 30.0) -> None:
        """Return once the stack is gone; :class:`DeleteFailed` if Heat says
        DELETE_FAILED, :class:`WaitTimeout` at the deadline. ON_WAIT(status, seconds)
        hears how it goes every SAY_EVERY_S seconds."""
        started = clock()
        deadline = started + deadline_s
        status = "DELETE_IN_PROGRESS"
        said = started
        while clock() < deadline:
            if on_wait is not None and clock() - said >= say_every_s:
                said = clock()
                on_wait(status, said - started)
            found = self.find(ref.name)
            if found is None or found.id != ref.id:
                return
            status, reason = self.status(ref)
            if status == "DELETE_FAILED":
                raise DeleteFailed(f"stack {ref.name} is DELETE_FAILED: {reason or 'no reason given'}", reason=reason)
            if not status.startswith("DELETE_") and not status.endswith("_IN_PROGRESS") \
                    and clock() - started >= DELETE_TAKEN_WITHIN_S:
                # Asked to delete while an update ran, Heat finished (rolled back) the update instead.
                raise DeleteFailed(f"stack {ref.name} is {status}, not being deleted", reason=f"Heat left it {status}")
            self.sleep(min(poll_s, max(0.0, deadline - clock())))
        raise WaitTimeout(f"stack {ref.name} not deleted within {deadline_s:.0f} s (last status {status})")


class DeleteFailed(CloudError):
    """Heat could not delete a stack (DELETE_FAILED); ``reason`` is Heat's."""

    def __init__(self, message: str, *, reason: str):
        super().__init__(message)
        self.reason = reason


def stack_body(api: Any, rendered: Rendered) -> dict[str, Any]:
    """template + files + environment, resolved by python-heatclient's own
    template_utils (through openstacksdk), as `openstack stack create` does."""
    attrs = api.read_env_and_templates(
        template_file=str(rendered.template),
        environment_files=[str(rendered.environment)],
    )
    return {key: attrs[key] for key in ("template", "files", "environment") if key in attrs}


def _self_path(resource: dict[str, Any]) -> Optional[str]:
    """The resource's own API path (``/stacks/NAME/ID/resources/RES``), from its links."""
    for link in resource.get("links") or []:
        if link.get("rel") == "self" and "/stacks/" in link.get("href", ""):
            return "/stacks/" + link["href"].split("/stacks/", 1)[1]
    return None


@dataclass(frozen=True)
class HostWaits:
    """The hosts' wait conditions as Heat lists them: who signalled, who failed, who not yet."""

    signalled: list[str]
    failed: list[tuple[str, str]]
    pending: list[str]
    nfs_failed: list[tuple[str, str]]


def host_of_wait(resource: dict[str, Any]) -> Optional[str]:
    """manager, nfs or worker-N for a host's wait condition; None for any other resource."""
    if resource.get("resource_type") != WAIT_CONDITION:
        return None
    name = resource.get("resource_name")
    if name == MANAGER_WAIT:
        return MANAGER_HOST
    if name == NFS_WAIT:
        return "nfs"
    parent = str(resource.get("parent_resource") or "")
    if name == WORKER_WAIT and parent.isdigit():
        return worker_host(int(parent))
    return None


def host_waits(resources: list[dict[str, Any]]) -> HostWaits:
    signalled, failed, pending, nfs_failed = [], [], [], []
    for resource in resources:
        host = host_of_wait(resource)
        status = str(resource.get("resource_status", ""))
        if host is None or status.startswith("DELETE"):
            continue
        if status.endswith("_FAILED"):
            (nfs_failed if host == "nfs" else failed).append((host, resource.get("resource_status_reason") or status))
        elif host != "nfs":
            (signalled if _is_done(status) else pending).append(host)
    return HostWaits(signalled, failed, pending, nfs_failed)


def is_aggregate(resource: dict[str, Any]) -> bool:
    """A resource that is a nested stack (the ResourceGroup, each of its members):
    it completes with its children, which the nested listing shows on their own."""
    return any(link.get("rel") == "nested" for link in resource.get("links") or [])


def count_resources(resources: list[dict[str, Any]]) -> tuple[int, int]:
    """(done, total) over the resources whose completion does not wait on hosts:
    every leaf resource but the wait conditions (a worker's nested stack waits
    on its wait condition, so aggregates are not counted either).

    INIT_COMPLETE is a resource Heat has not started yet (every resource of a
    stack just created lists so), DELETE_COMPLETE one that is gone: neither is done.
    """
    relevant = [r for r in resources if r.get("resource_type") != WAIT_CONDITION and not is_aggregate(r)]
    done = sum(1 for r in relevant if _is_done(str(r.get("resource_status", ""))))
    return done, len(relevant)


def _is_done(resource_status: str) -> bool:
    return resource_status.endswith("_COMPLETE") and resource_status not in NOT_DONE


def failed_resources(resources: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [
        (r.get("resource_name", "?"), r.get("resource_status_reason") or r.get("resource_status", ""))
        for r in resources
        if str(r.get("resource_status", "")).endswith("_FAILED")
    ]


def signal_counts(signals: dict[str, dict[str, Any]]) -> tuple[int, list[tuple[str, str]]]:
    """(SUCCESS count, [(host, reason)] of FAILURE signals)."""
    ok = sum(1 for s in signals.values() if s.get("status") == "SUCCESS")
    failed = [(host, s.get("reason", "")) for host, s in signals.items() if s.get("status") == "FAILURE"]
    return ok, failed


def decoded_signal_data(signals: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each host's signal (status, reason, data), its data as JSON where it is JSON."""
    out = {}
    for host, signal in signals.items():
        data = signal.get("data")
        with contextlib.suppress(ValueError):  # not JSON: kept as the host sent it
            data = json.loads(data) if isinstance(data, str) else data
        out[host] = {"status": signal.get("status"), "reason": signal.get("reason", ""), "data": data}
    return out


def scrub(value: Any) -> Any:
    """Drop secret-looking keys from evidence before it is written."""
    if isinstance(value, dict):
        return {k: ("<hidden>" if any(s in k.lower() for s in SECRET_KEYS) else scrub(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(scrub(data), indent=2, default=str) + "\n")
    return path


@contextlib.contextmanager
def _heat_errors(what: str, cloud_name: Optional[str]) -> Iterator[None]:
    """openstacksdk's and keystoneauth's errors as ours, naming the request (WHAT); an
    unanswered local cloud (CLOUD_NAME) says how to start it."""
    try:
        yield
    except os_exc.NotFoundException:
        raise NotFound(f"{what}: not found") from None
    except os_exc.HttpException as exc:
        request_id = f" (request {exc.request_id})" if getattr(exc, "request_id", None) else ""
        raise CloudError(f"Heat {what}: {one_line(exc)}{request_id}") from None
    except CloudError as exc:  # the retries gave up: say which API it was
        hint = (local_cloud_hint(cloud_name) if isinstance(exc, CloudUnreachable) else None) or exc.hint
        raise type(exc)(f"Heat {what}: {exc.message}", hint=hint, transient=exc.transient) from exc.__cause__
    except SDK_ERRORS as exc:  # signing in or finding the endpoint failed for good
        raise CloudError(f"Heat {what}: {one_line(exc)}",
                         hint="check the cloud's credentials and its orchestration endpoint") from None
