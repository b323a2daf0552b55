"""A tiny Nova metadata service for the container-VM tests (run inside the test network's namespace).

    python metadata_server.py TREE.json [--bind 169.254.169.254] [--port 80]

TREE.json maps each VM's address to its files: ``{"10.0.0.5": {"meta_data.json": {...},
"network_data.json": {...}, "user_data": "..."}}``. Answered as Nova answers:
``/openstack`` lists the versions, ``/openstack/latest/<file>``, and the EC2
layout (``/latest/meta-data/...``, ``/latest/user-data``) that cloud-init
also reads. Every request is printed (the test reads the log).
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OPENSTACK_VERSIONS = "2012-08-10\n2013-04-04\n2013-10-17\n2015-10-15\n2016-06-30\n2016-10-06\n2017-02-22\n2018-08-27\nlatest"
EC2_VERSIONS = ("latest", "2009-04-04")


def ec2_tree(meta: dict) -> dict:
    """The EC2 meta-data Nova derives from the OpenStack one."""
    keys = meta.get("public_keys", {})
    return {
        "instance-id": meta.get("uuid", ""),
        "hostname": meta.get("hostname", ""),
        "local-hostname": meta.get("hostname", ""),
        "placement": {"availability-zone": meta.get("availability_zone", "nova")},
        "public-keys": {f"{index}={name}": {"openssh-key": key} for index, (name, key) in enumerate(keys.items())},
    }


def lookup(tree, parts: list[str]):
    """The node at PARTS of a nested dict (public-keys keys are 'index=name', addressed by index)."""
    node = tree
    for part in parts:
        if not isinstance(node, dict):
            return None
        matches = [key for key in node if key == part or key.split("=", 1)[0] == part]
        if not matches:
            return None
        node = node[matches[0]]
    return node


def listing(node: dict) -> str:
    return "\n".join(key + "/" if isinstance(value, dict) else key for key, value in node.items())


def answer(files: dict, path: str) -> str | None:
    parts = [part for part in path.split("?")[0].split("/") if part]
    if parts == ["openstack"]:
        return OPENSTACK_VERSIONS
    if len(parts) == 2 and parts[0] == "openstack":
        return "meta_data.json\nnetwork_data.json\nuser_data\nvendor_data.json\nvendor_data2.json"
    if len(parts) == 3 and parts[0] == "openstack":
        if parts[2] in ("vendor_data.json", "vendor_data2.json"):
            return "{}"
        content = files.get(parts[2])
        return content if isinstance(content, str) or content is None else json.dumps(content)
    if parts and parts[0] in EC2_VERSIONS:
        return ec2_answer(files, parts[1:])
    if not parts:
        return "\n".join(EC2_VERSIONS) + "\nopenstack"
    return None


def ec2_answer(files: dict, parts: list[str]) -> str | None:
    if not parts:
        return "meta-data/\nuser-data"
    if parts == ["user-data"]:
        return files.get("user_data")
    if parts[0] != "meta-data":
        return None
    node = lookup(ec2_tree(files.get("meta_data.json", {})), parts[1:])
    if isinstance(node, dict):
        if parts[1:2] == ["public-keys"] and len(parts) == 2:
            return "\n".join(node)
        return listing(node)
    return node


class Handler(BaseHTTPRequestHandler):
    tree: dict = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        files = self.tree.get(self.client_address[0], {})
        body = answer(files, self.path) if files else None
        print(f"{self.client_address[0]} GET {self.path} -> {200 if body is not None else 404}", flush=True)
        self.send_response(200 if body is not None else 404)
        data = (body if body is not None else "not found").encode()
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("tree")
    parser.add_argument("--bind", default="169.254.169.254")
    parser.add_argument("--port", type=int, default=80)
    args = parser.parse_args(argv)
    with open(args.tree) as tree:
        Handler.tree = json.load(tree)
    server = ThreadingHTTPServer((args.bind, args.port), Handler)
    print(f"metadata service on {args.bind}:{args.port} for {', '.join(Handler.tree)}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
