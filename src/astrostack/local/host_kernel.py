"""Kernel settings a real VM makes for itself from cloud-init, which the local
cloud's container-VMs cannot: they share this machine's kernel.

The IPv4 neighbour (ARP) table is one per kernel. Every container on a
cluster's overlay keeps an entry per peer it talks to, so here, where all the
container-VMs' containers share one kernel, 200 nodes talking to each other
need 40 000 entries; Linux's 1024 overflowed ("neighbour table overflow" in
the kernel log), packets to new peers were dropped and MPI connections hung
in SYN-SENT. On a real VM cloud-init sizes its own table from the spec
(``size_neighbour_table`` in cloud_init/scripts/common.sh); inside a
container-VM that script says it cannot, and the local cloud sizes this one
for every cluster it can hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

NEIGH_DIR = Path("/proc/sys/net/ipv4/neigh/default")
# 1000 containers, each talking to every other, plus the overlays' own entries.
LOCAL_NEIGH_GC_THRESH = (16384, 524288, 1048576)


def ensure_neighbour_table(say: Callable[[str], None], folder: Path = NEIGH_DIR,
                           wanted: tuple[int, int, int] = LOCAL_NEIGH_GC_THRESH) -> bool:
    """Raise gc_thresh1-3 to WANTED where they are lower (never lowers them); True if changed."""
    files = [folder / f"gc_thresh{i}" for i in (1, 2, 3)]
    current = [int(f.read_text().split()[0]) for f in files]
    if all(now >= want for now, want in zip(current, wanted)):
        return False
    # gc_thresh1 <= gc_thresh2 <= gc_thresh3 at every step: the largest first.
    for path, now, want in reversed(list(zip(files, current, wanted))):
        if now < want:
            path.write_text(f"{want}\n")
    say("this kernel: neighbour table gc_thresh1-3 "
        f"{' '.join(map(str, current))} -> {' '.join(str(max(n, w)) for n, w in zip(current, wanted))} "
        "(every container-VM's containers share it; a real VM sizes its own from cloud-init)")
    return True
