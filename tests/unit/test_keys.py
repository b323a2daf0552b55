"""The per-cluster SSH key: made by `up` only, never replaced silently, private mode 0600."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from astrostack import keys
from astrostack.cli.main import main
from astrostack.errors import InvalidInput

SPEC = "name: demo\ncloud: kasi\nssh: {allowed_cidr: 203.0.113.7/32}\n"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTROSTACK_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_pair_has_a_private_key_of_mode_0600_and_its_public_line():
    private, line = keys.ensure_cluster_key("demo")

    assert mode(private) == 0o600
    key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    blob = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    assert line == f"{blob.decode()} astrostack-demo"
    assert private.with_suffix(".pub").read_text() == line + "\n"


def test_the_pair_is_kept_on_the_next_call():
    first = keys.ensure_cluster_key("demo")
    assert keys.ensure_cluster_key("demo") == first


def test_a_missing_public_key_is_derived_from_the_private_key_never_regenerated():
    private, line = keys.ensure_cluster_key("demo")
    before = private.read_bytes()
    private.with_suffix(".pub").unlink()

    assert keys.ensure_cluster_key("demo") == (private, line)
    assert private.read_bytes() == before
    assert private.with_suffix(".pub").read_text().strip() == line


def test_a_public_key_that_does_not_match_is_rewritten_from_the_private_key():
    private, line = keys.ensure_cluster_key("demo")
    other = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    private.with_suffix(".pub").write_text(other + "\n")

    assert keys.ensure_cluster_key("demo")[1] == line


def test_a_private_key_left_world_readable_becomes_0600(home):
    private, _ = keys.ensure_cluster_key("demo")
    os.chmod(private, 0o644)
    private.with_suffix(".pub").unlink()

    keys.ensure_cluster_key("demo")
    assert mode(private) == 0o600


def test_an_unreadable_private_key_is_never_replaced():
    private, _ = keys.ensure_cluster_key("demo")
    private.write_text("not a key\n")

    with pytest.raises(InvalidInput, match="cannot read this private key.*not replacing it"):
        keys.ensure_cluster_key("demo")
    assert private.read_text() == "not a key\n"


def test_a_public_key_without_its_private_key_stops_instead_of_replacing_it():
    private, _ = keys.ensure_cluster_key("demo")
    public = private.with_suffix(".pub")
    kept = public.read_text()
    private.unlink()

    with pytest.raises(InvalidInput, match="exists without its private key"):
        keys.ensure_cluster_key("demo")
    assert public.read_text() == kept and not private.exists()


def test_a_key_made_meanwhile_by_another_process_is_used(monkeypatch):
    """Two `up` at once: the second sees the first's key appear and keeps it."""
    theirs = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    real = keys._write_atomically

    def racing(target, data, mode, *, replace=True):
        if not replace:
            target.write_bytes(theirs)
        return real(target, data, mode, replace=replace)

    monkeypatch.setattr(keys, "_write_atomically", racing)
    private, _ = keys.ensure_cluster_key("demo")
    assert private.read_bytes() == theirs


@pytest.mark.parametrize("command", [["render", "s.yaml", "-o", "out"], ["validate", "s.yaml"],
                                     ["spec", "show", "s.yaml"]])
def test_offline_commands_make_no_key_and_no_data_folder(tmp_path, home, capsys, command):
    (tmp_path / "s.yaml").write_text(SPEC)

    assert main(command) == 0, capsys.readouterr().err
    assert not home.exists()
