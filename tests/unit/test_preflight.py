"""The kernel-feature checks, over fixed file contents (no root, no real /proc)."""

from __future__ import annotations

from astrostack.local import preflight
from astrostack.local.preflight import HostView

RELEASE = "6.1.0-test"

# /proc/self/status CapBnd of this project's test machines (no CAP_SYS_RESOURCE)
# and of a full root shell.
CAPBND_NO_SYS_RESOURCE = "000001fffeffffff"
CAPBND_FULL = "000001ffffffffff"

PROC_FILESYSTEMS_LIGHT_VM = "nodev\tsysfs\nnodev\ttmpfs\n\text4\n\tfuseblk\nnodev\tfuse\nnodev\tfusectl\n"
PROC_FILESYSTEMS_CLOUD_VM = PROC_FILESYSTEMS_LIGHT_VM + "nodev\tnfs\nnodev\tnfs4\nnodev\tnfsd\n"

PROC_CRYPTO_NO_GCM = "name         : cbc(aes)\ndriver       : cbc(aes-generic)\n\nname         : aes\n"
PROC_CRYPTO_GCM = PROC_CRYPTO_NO_GCM + "\nname         : rfc4106(gcm(aes))\ndriver       : rfc4106-gcm-aesni\n"


def view(files: dict[str, str], *, aead: bool | None = None) -> HostView:
    """A host whose readable files are exactly ``files``."""
    return HostView(read_text=files.get, exists=lambda path: path in files,
                    aead_probe=lambda name: aead, kernel_release=RELEASE)


def status(capbnd: str) -> str:
    return f"Name:\tpython3\nCapInh:\t0000000000000000\nCapBnd:\t{capbnd}\nCapAmb:\t0\n"


def light_vm() -> dict[str, str]:
    """What the project's test machines show (measured)."""
    return {"/proc/filesystems": PROC_FILESYSTEMS_LIGHT_VM, "/proc/crypto": PROC_CRYPTO_NO_GCM,
            "/proc/net/xfrm_stat": "", "/proc/self/status": status(CAPBND_NO_SYS_RESOURCE),
            "/dev/fuse": ""}


def cloud_vm() -> dict[str, str]:
    """A stock cloud kernel: modules on disk, IPVS loaded, NFS registered."""
    return {"/proc/filesystems": PROC_FILESYSTEMS_CLOUD_VM, "/proc/crypto": PROC_CRYPTO_NO_GCM,
            "/proc/net/xfrm_stat": "", "/proc/net/ip_vs": "", "/dev/fuse": "",
            "/proc/self/status": status(CAPBND_FULL),
            f"/lib/modules/{RELEASE}/modules.dep":
                "kernel/net/ipv4/esp4.ko.xz: kernel/net/xfrm/xfrm_algo.ko.xz\n"
                "kernel/crypto/gcm.ko.xz: kernel/crypto/ghash-generic.ko.xz\n",
            f"/lib/modules/{RELEASE}/modules.builtin": "kernel/fs/fuse/fuse.ko\n"}


def by_feature(rows):
    return {row.feature.split(" (")[0]: row for row in rows}


def test_light_vm_lacks_everything_but_fuse():
    rows = by_feature(preflight.run_preflight(view(light_vm())))
    assert {name: row.available for name, row in rows.items()} == {
        "encrypted overlay": False, "IPVS": False, "kernel NFS client": False,
        "kernel NFS server": False, "FUSE": True, "docker --privileged": False}
    assert "CAP_SYS_RESOURCE missing" in rows["docker --privileged"].detail
    assert "dnsrr" in rows["IPVS"].substitute


def test_cloud_vm_has_everything():
    rows = preflight.run_preflight(view(cloud_vm()))
    assert all(row.available for row in rows), preflight.missing(rows)
    assert preflight.missing(rows) == []


def test_gcm_seen_in_proc_crypto_without_module_list():
    files = dict(light_vm(), **{"/proc/crypto": PROC_CRYPTO_GCM})
    row = preflight.check_encrypted_overlay(view(files))
    assert row.available
    assert "via /proc/crypto" in row.detail and "esp4 not visible" in row.detail


def test_gcm_seen_by_af_alg_probe():
    assert preflight.check_encrypted_overlay(view(light_vm(), aead=True)).available


def test_gcm_without_xfrm_is_not_enough():
    files = dict(light_vm(), **{"/proc/crypto": PROC_CRYPTO_GCM})
    del files["/proc/net/xfrm_stat"]
    row = preflight.check_encrypted_overlay(view(files))
    assert not row.available and "xfrm absent" in row.detail


def test_module_list_without_esp4_means_no_encryption():
    files = dict(cloud_vm())
    files[f"/lib/modules/{RELEASE}/modules.dep"] = "kernel/crypto/gcm.ko.xz:\n"
    row = preflight.check_encrypted_overlay(view(files))
    assert not row.available and "no esp4 module" in row.detail


def test_ipvs_loadable_module_counts():
    files = dict(light_vm(), **{f"/lib/modules/{RELEASE}/modules.dep":
                                "kernel/net/netfilter/ipvs/ip_vs.ko.xz: kernel/x.ko\n"})
    row = preflight.check_ipvs(view(files))
    assert row.available and "module listed" in row.detail


def test_fuse_needs_its_device():
    files = light_vm()
    del files["/dev/fuse"]
    row = preflight.check_fuse(view(files))
    assert not row.available and "/dev/fuse is missing" in row.detail


def test_privileged_with_full_bounding_set():
    row = preflight.check_privileged(view({"/proc/self/status": status(CAPBND_FULL)}))
    assert row.available and "CAP_SYS_RESOURCE present" in row.detail


def test_unreadable_status_is_reported_not_guessed():
    row = preflight.check_privileged(view({}))
    assert not row.available and row.detail == "CapBnd not found in /proc/self/status"


def test_missing_lines_name_feature_substitute_and_evidence():
    lines = preflight.missing(preflight.run_preflight(view(light_vm())))
    assert len(lines) == 5
    assert lines[2] == ("kernel NFS client: missing -> the VM image's mount.nfs4: a real TCP connect to "
                        "SERVER:2049, then the hypervisor attaches the server VM's exported tree "
                        "(images/vm/README.md) (nfs/nfs4 not in /proc/filesystems and no such module)")


def test_real_host_runs_without_error():
    rows = preflight.run_preflight()
    assert [row.feature for row in rows] == [check(view(light_vm())).feature
                                              for check in preflight.CHECKS]
