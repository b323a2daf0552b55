"""How the base image is made, without Docker: what is trimmed from debootstrap's tree."""

from __future__ import annotations

from astrostack import images


def test_the_base_keeps_no_downloaded_package_list_or_cache_and_drops_later_ones(tmp_path):
    rootfs = tmp_path / "rootfs"
    leftovers = ["var/cache/apt/archives/bash_5.2_amd64.deb", "var/cache/apt/archives/partial/x.deb",
                 "var/cache/apt/pkgcache.bin", "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease"]
    kept = ["var/cache/apt/archives/lock", "usr/bin/bash", "etc/apt/sources.list"]
    for relative in leftovers + kept:
        (rootfs / relative).parent.mkdir(parents=True, exist_ok=True)
        (rootfs / relative).write_text("x")
    (rootfs / "etc/apt/apt.conf.d").mkdir(parents=True)

    images._trim_rootfs(rootfs)

    assert [p for p in leftovers if (rootfs / p).exists()] == []
    assert [p for p in kept if not (rootfs / p).exists()] == []
    clean = (rootfs / "etc/apt/apt.conf.d/docker-clean").read_text()
    assert "DPkg::Post-Invoke" in clean and "/var/cache/apt/archives/*.deb" in clean


def test_every_image_recipe_digest_changes_with_the_base_recipe(monkeypatch):
    before = images.recipe_digest("mpi-base")
    monkeypatch.setattr(images, "BASE_LEFTOVERS", images.BASE_LEFTOVERS + ("usr/share/doc/*",))
    assert images.recipe_digest("mpi-base") != before
