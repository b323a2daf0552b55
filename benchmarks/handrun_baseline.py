"""A hand-run baseline of what `astrostack up` does, written independently of
astrostack's code: the steps an operator would type, through openstacksdk and
ssh, on the same cloud, the same image and flavors.

    python benchmarks/handrun_baseline.py --hosts 3 --nodes 12 [--keep]

1. network, subnet, router to `public`, one security group (members talk to
   each other; SSH from this machine);
2. an NFS server VM with a volume, the manager with a floating IP, the workers
   (plain `openstack server create`, no Heat), each with a short user-data that
   only starts Docker;
3. over SSH: the volume formatted and exported, every host mounts it; `docker
   swarm init` on the manager, `join` on the workers; an overlay network;
4. the image pushed from this machine to the site registry (172.24.4.1:5050);
   two services (1 master, NODES-1 workers) of it;
5. waits until every task runs, writes the hostfile from the task addresses
   and runs `mpirun -np NODES mpi_smoke` until it succeeds.

Prints the time of each step and the total (the figure `benchmarks/local_cloud.py
--against-baseline` compares `up` with), then deletes everything it made
(unless --keep). It uses none of astrostack's modules: only openstacksdk, the
Docker SDK and the ssh client.
"""

from __future__ import annotations

import argparse
import base64
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import openstack

CLOUD = "astrostack-local"
IMAGE, EXTERNAL = "debian-12", "public"
REGISTRY = "172.24.4.1:5050"
APP = "astrostack/mpi-base:latest"
ME = "172.24.4.1/32"
USER_DATA = "#cloud-config\nruncmd:\n  - [systemctl, enable, --now, docker]\n"
POLL_S = 1.0


class Step:
    """Times one step of the baseline."""

    times: dict[str, float] = {}

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.started = time.monotonic()
        print(f"baseline: {self.name}", flush=True)

    def __exit__(self, *exc):
        Step.times[self.name] = time.monotonic() - self.started


def until(what: str, ready, timeout: float = 600.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(POLL_S)
    raise TimeoutError(f"baseline: {what} not within {timeout:.0f} s")


class Hands:
    """What the operator does: cloud calls and ssh commands."""

    def __init__(self, name: str, hosts: int, nodes: int, cidr: str):
        self.name, self.hosts, self.nodes, self.cidr = name, hosts, nodes, cidr
        self.conn = openstack.connect(cloud=CLOUD, api_timeout=60)
        self.tmp = Path(tempfile.mkdtemp(prefix="baseline-"))
        self.key = self.tmp / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        self.made: list[tuple[str, object]] = []
        self.servers: dict[str, object] = {}

    # --- cloud -------------------------------------------------------------------------

    def network(self) -> None:
        net = self.conn.network.create_network(name=f"{self.name}-net")
        self.made.append(("network", net))
        self.subnet = self.conn.network.create_subnet(network_id=net.id, cidr=self.cidr, ip_version=4,
                                                      name=f"{self.name}-subnet")
        ext = self.conn.network.find_network(EXTERNAL)
        router = self.conn.network.create_router(name=f"{self.name}-router",
                                                 external_gateway_info={"network_id": ext.id})
        self.made.append(("router", router))
        self.conn.network.add_interface_to_router(router, subnet_id=self.subnet.id)
        group = self.conn.network.create_security_group(name=f"{self.name}-sg")
        self.made.append(("security_group", group))
        self.conn.network.create_security_group_rule(security_group_id=group.id, direction="ingress",
                                                     remote_group_id=group.id, ethertype="IPv4")
        self.conn.network.create_security_group_rule(security_group_id=group.id, direction="ingress",
                                                     protocol="tcp", port_range_min=22, port_range_max=22,
                                                     remote_ip_prefix=ME)
        self.net, self.group = net, group
        keypair = self.conn.compute.create_keypair(name=f"{self.name}-key", public_key=(
            self.key.with_suffix(".pub").read_text()))
        self.made.append(("keypair", keypair))

    def boot(self) -> None:
        names = ["nfs", "manager"] + [f"worker-{i}" for i in range(self.hosts - 1)]
        flavor = {"nfs": "m1.tiny"}
        image = self.conn.image.find_image(IMAGE)
        for host in names:
            server = self.conn.compute.create_server(
                name=f"{self.name}-{host}", image_id=image.id, flavor_id=self.conn.compute.find_flavor(
                    flavor.get(host, "m1.small")).id, key_name=f"{self.name}-key",
                networks=[{"uuid": self.net.id}], security_groups=[{"name": self.group.name}],
                user_data=base64.b64encode(USER_DATA.encode()).decode())
            self.servers[host] = server
            self.made.append(("server", server))
        self.volume = self.conn.block_storage.create_volume(size=2, name=f"{self.name}-vol")
        self.made.append(("volume", self.volume))
        for host, server in self.servers.items():
            self.servers[host] = self.conn.compute.wait_for_server(server, wait=600)
        self.conn.block_storage.wait_for_status(self.volume, "available", wait=300)
        self.conn.compute.create_volume_attachment(self.servers["nfs"], volume_id=self.volume.id)
        port = next(self.conn.network.ports(device_id=self.servers["manager"].id))
        fip = self.conn.network.create_ip(floating_network_id=self.conn.network.find_network(EXTERNAL).id,
                                          port_id=port.id)
        self.made.append(("floating_ip", fip))
        self.fip = fip.floating_ip_address
        self.ips = {host: next(iter(s.addresses.values()))[0]["addr"] for host, s in self.servers.items()}

    # --- ssh ---------------------------------------------------------------------------

    def ssh(self, host: str, script: str, timeout: float = 300) -> str:
        options = ["-i", str(self.key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                   "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "-o", "BatchMode=yes"]
        argv = ["ssh", *options]
        if host != "manager":
            hop = " ".join(shlex.quote(x) for x in ["ssh", *options, "-W", "%h:%p", f"debian@{self.fip}"])
            argv += ["-o", f"ProxyCommand={hop}", f"debian@{self.ips[host]}"]
        else:
            argv.append(f"debian@{self.fip}")
        done = subprocess.run(argv + ["sudo bash -c " + shlex.quote(script)], capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"baseline: on {host}: {script[:60]}...: {done.stderr.strip()[-300:]}")
        return done.stdout

    def reachable(self, host: str) -> bool:
        try:
            self.ssh(host, "systemctl is-active docker", timeout=30)
            return True
        except (RuntimeError, subprocess.TimeoutExpired):
            return False

    def share(self) -> None:
        vol = self.volume.id
        self.ssh("nfs", f"d=$(ls /dev/disk/by-id/virtio-{vol[:20]}*); until [ -e \"$d\" ]; do sleep 1; "
                        f"d=$(ls /dev/disk/by-id/virtio-{vol[:20]}*); done; mkfs.ext4 -q \"$d\"; mkdir -p /export; "
                        f"mount \"$d\" /export; echo '/export {self.cidr}(rw,no_root_squash,no_subtree_check)' "
                        ">/etc/exports; systemctl restart nfs-server; exportfs -ra")
        for host in self.servers:
            if host != "nfs":
                self.ssh(host, f"mkdir -p /mnt/share; mount -t nfs4 {self.ips['nfs']}:/export /mnt/share")

    def swarm(self) -> None:
        registry = json.dumps({"insecure-registries": [REGISTRY], "mtu": 1450})
        for host in self.servers:
            if host != "nfs":
                self.ssh(host, f"echo '{registry}' >/etc/docker/daemon.json; systemctl restart docker")
        manager = self.ips["manager"]
        self.ssh("manager", f"docker swarm init --advertise-addr {manager} >/dev/null")
        token = self.ssh("manager", "docker swarm join-token -q worker").strip()
        for host in self.servers:
            if host.startswith("worker-"):
                self.ssh(host, f"docker swarm join --token {token} {manager}:2377 >/dev/null")
        self.ssh("manager", "docker network create -d overlay --attachable --subnet 10.0.9.0/24 "
                            "--opt com.docker.network.driver.mtu=1400 mpi >/dev/null")

    def services(self) -> None:
        client = docker.from_env(timeout=300)
        client.images.get(APP).tag(f"{REGISTRY}/{APP.split(':')[0]}", tag="latest")
        for line in client.api.push(f"{REGISTRY}/{APP.split(':')[0]}", tag="latest", stream=True, decode=True):
            if "error" in line:
                raise RuntimeError(f"baseline: push: {line['error']}")
        key = "k=$(mktemp -d); ssh-keygen -q -t ed25519 -N '' -f $k/id; " \
              "docker secret create key $k/id >/dev/null; docker secret create pub $k/id.pub >/dev/null"
        self.ssh("manager", key)
        common = ("--network mpi --endpoint-mode dnsrr --hostname '{{.Service.Name}}-{{.Task.Slot}}' "
                  "--secret source=key,target=ssh_key,mode=0400 --secret source=pub,target=ssh_pub,mode=0444 "
                  "--mount type=bind,source=/mnt/share,target=/share --env ASTRO_SLOTS=1 "
                  "--env ASTRO_OVERLAY_CIDR=10.0.9.0/24 --env ASTRO_MPI_PORTS=any")
        image = f"{REGISTRY}/{APP}"
        self.ssh("manager", f"docker service create -d -q --name master --replicas 1 --constraint node.role==manager "
                            f"--env ASTRO_ROLE=master --env ASTRO_CLUSTER={self.name} {common} {image} >/dev/null; "
                            f"docker service create -d -q --name worker --replicas {self.nodes - 1} "
                            f"--env ASTRO_ROLE=worker --env ASTRO_CLUSTER={self.name} {common} {image} >/dev/null")

    def running(self) -> bool:
        out = self.ssh("manager", "docker service ps -q --filter desired-state=running "
                                  "--format '{{.CurrentState}}' master worker")
        return sum(line.startswith("Running") for line in out.splitlines()) >= self.nodes

    def smoke(self) -> bool:
        script = ("docker network inspect --verbose mpi --format '{{json .Services}}' | python3 -c '"
                  "import json,sys; s=json.load(sys.stdin); "
                  "[print(t[\"EndpointIP\"], \"slots=1\") for n in (\"master\",\"worker\") "
                  "for t in sorted(s.get(n,{}).get(\"Tasks\",[]), key=lambda t: t[\"Name\"])]' "
                  "> /mnt/share/hostfile; "
                  "c=$(docker ps -q --filter label=com.docker.swarm.service.name=master); "
                  f"docker exec $c mpirun --hostfile /share/hostfile -np {self.nodes} "
                  "--mca btl_tcp_if_include 10.0.9.0/24 --mca oob_tcp_if_include 10.0.9.0/24 /usr/local/bin/mpi_smoke")
        try:
            return f'"size": {self.nodes}' in self.ssh("manager", script, timeout=180)
        except (RuntimeError, subprocess.TimeoutExpired):
            return False

    def clean(self) -> None:
        # Servers first: the volume is attached to the NFS server until it is gone
        # (in plain reverse order the volume came first and waited on it for 300 s).
        order = sorted(reversed(self.made), key=lambda made: made[0] != "server")
        for kind, item in order:
            try:
                if kind == "server":
                    self.conn.compute.delete_server(item)
                    self.conn.compute.wait_for_delete(item, wait=300)
                elif kind == "volume":
                    # the object from creation still says "available": wait on a fresh one
                    fresh = self.conn.block_storage.get_volume(item)
                    self.conn.block_storage.wait_for_status(fresh, "available", wait=300)
                    self.conn.block_storage.delete_volume(item)
                elif kind == "router":
                    self.conn.network.remove_interface_from_router(item, subnet_id=self.subnet.id)
                    self.conn.network.delete_router(item)
                elif kind == "floating_ip":
                    self.conn.network.delete_ip(item)
                elif kind == "network":
                    for port in self.conn.network.ports(network_id=item.id):
                        if port.device_owner in ("", "network:dhcp"):
                            self.conn.network.delete_port(port)
                    self.conn.network.delete_network(item)
                elif kind == "security_group":
                    self.conn.network.delete_security_group(item)
                elif kind == "keypair":
                    self.conn.compute.delete_keypair(item)
            except openstack.exceptions.SDKException as exc:
                print(f"baseline: clean-up of {kind}: {exc}", file=sys.stderr)


def run(hosts: int, nodes: int, name: str = "bench-hand", cidr: str = "10.140.0.0/24", keep: bool = False) -> float:
    """One hand-run deployment; returns seconds from the first call to the smoke test passing."""
    Step.times = {}
    hands = Hands(name, hosts, nodes, cidr)
    started = time.monotonic()
    try:
        with Step("network"):
            hands.network()
        with Step("boot"):
            hands.boot()
        with Step("ssh reachable"):
            for host in hands.servers:
                until(f"{host} reachable", lambda host=host: hands.reachable(host))
        with Step("share"):
            hands.share()
        with Step("swarm"):
            hands.swarm()
        with Step("image and services"):
            hands.services()
        with Step("tasks running"):
            until("every task running", hands.running)
        with Step("smoke test"):
            until("the smoke test", hands.smoke)
        return time.monotonic() - started
    finally:
        if not keep:
            hands.clean()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=12)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    total = run(args.hosts, args.nodes, keep=args.keep)
    for step, seconds in Step.times.items():
        print(f"  {step:<20} {seconds:7.1f} s")
    print(f"hand-run baseline {args.hosts} hosts x {args.nodes} nodes: {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
