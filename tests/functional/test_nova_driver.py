"""ContainerDriver through Nova's own objects, without the control plane.

nova_driver_probe.py runs in a Python that has Nova (the local cloud's
OpenStack venv, or $ASTROSTACK_OPENSTACK_PYTHON) with this checkout's
astrostack_localcloud first on its path, and reports what it saw.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

# Its probe prunes the hypervisor image cache that the local cloud's nova-compute uses too.
pytestmark = [pytest.mark.functional, pytest.mark.exclusive]

SOURCE = Path(__file__).resolve().parents[2] / "src"
PROBE = Path(__file__).with_name("nova_driver_probe.py")


def openstack_python() -> str | None:
    candidates = [os.environ.get("ASTROSTACK_OPENSTACK_PYTHON", "")]
    home = Path(os.environ.get("ASTROSTACK_HOME", Path.home() / ".local/share/astrostack"))
    candidates.append(str(home / "local" / "openstack-venv" / "bin" / "python"))
    for python in filter(None, candidates):
        if Path(python).exists() and subprocess.run([python, "-c", "import nova.virt.fake"], capture_output=True,
                                                    timeout=120).returncode == 0:
            return python
    return None


@pytest.fixture(scope="module")
def findings(docker_client, tmp_path_factory):
    python = openstack_python()
    if python is None or os.geteuid() != 0 or shutil.which("dnsmasq") is None:
        pytest.skip("needs root, dnsmasq and a Python with Nova 34 (ASTROSTACK_OPENSTACK_PYTHON)")
    timeout = float(os.environ.get("ASTROSTACK_TEST_TIMEOUT", "180")) * 4
    done = subprocess.run([python, str(PROBE), str(tmp_path_factory.mktemp("t2-nova"))], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(SOURCE)})
    assert done.stdout.strip(), f"the probe printed nothing: {done.stderr[-3000:]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "error" not in result, result.get("traceback", result["error"])
    print({key: value for key, value in result.items() if key.endswith("_s")})
    return result


def test_spawn_boots_a_cloud_vm_from_a_docker_image_loaded_once(findings):
    assert findings["image_cached"] and findings["info_after_spawn"] and findings["listed"]
    assert "inet 10.250.32.10/24" in findings["address"]
    assert findings["datasource"] == "openstack"


def test_the_console_output_is_the_guests_tty(findings):
    assert findings["console_has_cloud_init"]
    assert findings["console_bytes"] <= 100 * 1024


def test_a_cinder_connection_gives_a_block_device_and_detach_frees_its_loop(findings):
    assert findings["volume_attached"] and findings["volume_detached"]
    assert findings["loops_after_detach"] == ""


def test_power_off_on_and_reboot(findings):
    assert findings["off_state"] and findings["on_state"] and findings["rebooted"]


def test_a_restarted_driver_finds_the_server(findings):
    assert findings["found_after_restart"]


def test_a_guest_poweroff_is_a_stopped_lifecycle_event_within_seconds(findings):
    assert findings["state_after_poweroff"]
    assert findings["stopped_event_s"] < 10


def test_destroy_leaves_nothing(findings):
    assert findings["not_found_after_destroy"]
    assert findings["leftovers"] == "" and not findings["tap_left"]


def test_the_image_cache_pass_removes_an_image_no_server_uses(findings):
    assert findings["pruned"]
