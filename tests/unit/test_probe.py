"""What the deployment probe reads from a host's console."""

from __future__ import annotations

from pathlib import Path

from astrostack.probe import SIGNAL_UNREACHABLE_MARKER, signal_unreachable

COMMON_SH = Path(__file__).resolve().parents[2] / "cloud_init" / "scripts" / "common.sh"


def test_the_host_script_prints_the_marker_the_probe_looks_for():
    assert f'print(f"{SIGNAL_UNREACHABLE_MARKER} {{where}} {{exc}}"' in COMMON_SH.read_text()


def test_a_console_with_the_marker_says_which_url_and_why():
    console = ("[   12.3] cloud-init[411]: signal attempt 3/10 to http://heat.example:8004/v1/x: timed out\n"
               f"[   12.3] cloud-init[411]: {SIGNAL_UNREACHABLE_MARKER} http://heat.example:8004/v1/x "
               "<urlopen error [Errno 111] Connection refused>\n")

    why = signal_unreachable(console)

    assert why is not None
    assert "http://heat.example:8004/v1/x" in why and "Connection refused" in why
    assert "route to Heat's API" in why


def test_a_console_without_the_marker_says_nothing():
    assert signal_unreachable("cloud-init: signalled SUCCESS: manager ready\n") is None
