"""``astrostack-localnet``: the network agent of the local cloud.

    astrostack-localnet [--config-file FILE] [--once] [--cleanup-all] [--debug]

Reconciles the data plane from the Neutron API at start, after every burst
of Neutron's notifications (oslo.messaging, coalesced) and every
``resync_interval`` seconds. It runs as root in the OpenStack venv.
``--cleanup-all`` removes everything it ever made and exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from astrostack_localcloud.net import config as agent_config
from astrostack_localcloud.net.config import AgentConfig, ConfigError
from astrostack_localcloud.net.metadata import MetadataProxy, Upstream
from astrostack_localcloud.net.neutron_state import (
    DHCP_OWNER,
    NeutronError,
    Port,
    Topology,
    api_errors,
    fetch_payload,
    parse_port,
    topology_from_payload,
)
from astrostack_localcloud.net.reconcile import Outcome, Reconciler

LOG = logging.getLogger("astrostack_localcloud.net.agent")
DEBOUNCE_S = 0.15          # a burst of notifications (port create, update, binding) becomes one pass
RETRY_MIN_S, RETRY_MAX_S = 1.0, 30.0
SLOW_PASS_S = 2.0          # a pass slower than this is said at INFO (Neutron busy, a slow command)
DEEP_EVERY = 10            # every 10th periodic resync re-applies everything, changed or not


# --- Neutron ----------------------------------------------------------------------------


class Neutron:
    """The API, through openstacksdk with the admin cloud of clouds.yaml."""

    def __init__(self, config: AgentConfig):
        self.config = config
        self._connection = None

    def _network(self):
        if self._connection is None:
            import openstack

            if self.config.clouds_yaml:
                os.environ["OS_CLIENT_CONFIG_FILE"] = self.config.clouds_yaml
            try:
                self._connection = openstack.connect(api_timeout=self.config.api_timeout, **self._auth())
            except Exception as exc:  # openstacksdk raises several unrelated types for a bad cloud entry
                raise NeutronError(f"cloud {self.config.cloud!r}: {exc}") from exc
        return self._connection.network

    def _auth(self) -> dict[str, str]:
        """The config's service credentials, else the clouds.yaml entry it names."""
        return dict(self.config.credentials) if self.config.credentials else {"cloud": self.config.cloud}

    def topology(self) -> Topology:
        try:
            return topology_from_payload(fetch_payload(self._network()))
        except NeutronError:
            self._connection = None     # a new session (and token) next time
            raise

    def create(self, network_id: str, subnet_ids: list[str], device_id: str, project_id: str) -> Port:
        """The network's DHCP port, as Neutron's DHCP agent would create it (in the network's project)."""
        from openstack import exceptions

        body = {"port": {"network_id": network_id, "device_owner": DHCP_OWNER, "device_id": device_id,
                         "name": "", "fixed_ips": [{"subnet_id": s} for s in subnet_ids]}}
        if project_id:
            body["port"]["project_id"] = project_id
        try:
            response = self._network().post("/ports", json=body)
            exceptions.raise_from_response(response)
            return parse_port(response.json()["port"])
        except api_errors() as exc:
            raise NeutronError(f"create DHCP port of network {network_id}: {exc}") from exc


# --- notifications ----------------------------------------------------------------------


class _Endpoint:
    """Every Neutron notification only says "look again"; the API is the truth."""

    def __init__(self, poke):
        self._poke = poke

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        LOG.debug("notification %s from %s", event_type, publisher_id)
        self._poke()

    warn = error = info


def start_listener(config: AgentConfig, poke):
    """An oslo.messaging notification listener on Neutron's topic, or None without a transport."""
    if not config.transport_url:
        LOG.warning("no transport_url: only periodic resyncs every %.0f s", config.resync_interval)
        return None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
        import oslo_messaging
        from oslo_config import cfg

    transport = oslo_messaging.get_notification_transport(cfg.ConfigOpts(), url=config.transport_url)
    targets = [oslo_messaging.Target(topic=topic) for topic in config.notification_topics]
    listener = oslo_messaging.get_notification_listener(transport, targets, [_Endpoint(poke)], executor="threading")
    listener.start()
    LOG.info("listening to notifications on %s", ", ".join(config.notification_topics))
    return listener


# --- the loop ---------------------------------------------------------------------------


class Agent:
    def __init__(self, config: AgentConfig, neutron: Neutron, reconciler: Reconciler):
        self.config = config
        self.neutron = neutron
        self.reconciler = reconciler
        self._poked = threading.Event()
        self._stopping = threading.Event()
        self._retry_delay = RETRY_MIN_S

    def poke(self) -> None:
        self._poked.set()

    def stop(self) -> None:
        self._stopping.set()
        self._poked.set()

    def pass_once(self, deep: bool) -> Outcome | None:
        started = time.monotonic()
        try:
            topology = self.neutron.topology()
        except NeutronError as exc:
            LOG.error("Neutron: %s", exc)
            return None
        fetched = time.monotonic() - started
        outcome = self.reconciler.reconcile(topology, deep=deep)
        slow = fetched + outcome.elapsed > SLOW_PASS_S
        level = logging.WARNING if outcome.failures else logging.INFO if slow else logging.DEBUG
        LOG.log(level, "pass%s: Neutron read in %.2f s, applied in %.2f s (%d actions, %d failures)",
                " (deep)" if deep else "", fetched, outcome.elapsed, len(outcome.actions), len(outcome.failures))
        return outcome

    def run(self) -> None:
        """Until stop(): a pass when poked, when a failed pass is due for a retry, and periodically."""
        due = time.monotonic()
        retry_at: float | None = None
        resyncs = 0
        while not self._stopping.is_set():
            wake = min(due, retry_at) if retry_at is not None else due
            poked = self._poked.wait(timeout=max(0.0, wake - time.monotonic()))
            if self._stopping.is_set():
                break
            if poked:
                time.sleep(DEBOUNCE_S)
                self._poked.clear()
            now = time.monotonic()
            periodic = now >= due
            if periodic:
                resyncs += 1
                due = now + self.config.resync_interval
            try:
                outcome = self.pass_once(deep=periodic and resyncs % DEEP_EVERY == 1)
            except Exception:  # the agent must outlive any one bad pass; the next one retries
                LOG.exception("reconcile failed")
                outcome = None
            retry_at = self._retry_time(outcome, now)

    def _retry_time(self, outcome: Outcome | None, now: float) -> float | None:
        if outcome is not None and not outcome.failures:
            self._retry_delay = RETRY_MIN_S
            return None
        delay, self._retry_delay = self._retry_delay, min(self._retry_delay * 2, RETRY_MAX_S)
        return now + delay


# --- main -------------------------------------------------------------------------------


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="astrostack-localnet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", type=Path, default=None,
                        help=f"default: {agent_config.default_config_path()}")
    parser.add_argument("--once", action="store_true", help="one reconcile, then exit (status 1 on failures)")
    parser.add_argument("--cleanup-all", action="store_true", help="remove everything the agent made, then exit")
    parser.add_argument("--debug", action="store_true")
    return parser.parse_args(argv)


def _proxy(config: AgentConfig, reconciler: Reconciler) -> MetadataProxy:
    if not config.metadata_secret:
        LOG.warning("no metadata_proxy_shared_secret: nova-metadata will refuse the proxy's requests")
    upstream = Upstream(config.nova_metadata_host, config.nova_metadata_port, config.metadata_secret,
                        namespace=config.host_namespace)
    return MetadataProxy(reconciler.lookup, upstream)


def cleanup_all(config: AgentConfig) -> int:
    reconciler = Reconciler(config)
    outcome = reconciler.cleanup_all(sweep=config.host_namespace is None)
    for what, error in outcome.failures.items():
        print(f"cleanup: {what}: {error}", file=sys.stderr)
    return 1 if outcome.failures else 0


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("oslo_messaging", "amqp", "kombu", "keystoneauth", "openstack", "urllib3", "stevedore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        config = agent_config.load(args.config_file or agent_config.default_config_path())
    except ConfigError as exc:
        print(f"astrostack-localnet: {exc}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("astrostack-localnet: must run as root (it makes namespaces, bridges and iptables rules)",
              file=sys.stderr)
        return 2
    if args.cleanup_all:
        return cleanup_all(config)
    neutron = Neutron(config)
    reconciler = Reconciler(config, dhcp_ports=neutron)
    reconciler.proxy = _proxy(config, reconciler)
    agent = Agent(config, neutron, reconciler)
    if args.once:
        outcome = agent.pass_once(deep=True)
        return 0 if outcome is not None and not outcome.failures else 1
    return _serve(config, agent, reconciler)


def _serve(config: AgentConfig, agent: Agent, reconciler: Reconciler) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop())
    listener = None
    try:
        listener = start_listener(config, agent.poke)
    except Exception as exc:  # a broker that is down must not stop the data plane; resyncs still run
        LOG.error("notifications unavailable (%s): periodic resyncs only", exc)
    LOG.info("astrostack-localnet running (resync every %.0f s)", config.resync_interval)
    try:
        agent.run()
    finally:
        if listener is not None:
            listener.stop()
            listener.wait()
        reconciler.proxy.close()
    LOG.info("astrostack-localnet stopped; the data plane stays as it is")
    return 0


if __name__ == "__main__":
    sys.exit(main())
