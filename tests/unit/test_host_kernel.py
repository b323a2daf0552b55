"""The local cloud sizes this machine's neighbour table for its container-VMs
(they share its kernel; a real VM sizes its own from cloud-init)."""

from __future__ import annotations

from pathlib import Path

from astrostack.local import host_kernel


def _table(folder: Path, values: tuple[int, int, int]) -> Path:
    folder.mkdir(exist_ok=True)
    for i, value in enumerate(values, 1):
        (folder / f"gc_thresh{i}").write_text(f"{value}\n")
    return folder


def _read(folder: Path) -> list[int]:
    return [int((folder / f"gc_thresh{i}").read_text()) for i in (1, 2, 3)]


def test_the_defaults_are_raised_to_what_the_local_cloud_holds_and_it_says_so(tmp_path):
    folder = _table(tmp_path / "neigh", (128, 512, 1024))
    said: list[str] = []

    assert host_kernel.ensure_neighbour_table(said.append, folder) is True
    assert _read(folder) == list(host_kernel.LOCAL_NEIGH_GC_THRESH)
    assert said and "128 512 1024 ->" in said[0]


def test_larger_settings_are_kept_and_nothing_is_said_when_all_are_large_enough(tmp_path):
    folder = _table(tmp_path / "neigh", (50000, 600000, 2000000))
    said: list[str] = []

    assert host_kernel.ensure_neighbour_table(said.append, folder) is False
    assert _read(folder) == [50000, 600000, 2000000] and said == []


def test_only_the_settings_below_are_raised(tmp_path):
    folder = _table(tmp_path / "neigh", (50000, 512, 1024))

    host_kernel.ensure_neighbour_table(lambda line: None, folder)

    assert _read(folder) == [50000, *host_kernel.LOCAL_NEIGH_GC_THRESH[1:]]
