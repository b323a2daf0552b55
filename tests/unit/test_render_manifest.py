"""`render` never overwrites a file it did not write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from astrostack.cli.main import main
from astrostack.errors import EXIT_INVALID_INPUT, InvalidInput
from astrostack.render import MANIFEST, render
from astrostack.spec import parse_spec, starter_spec

ROOT = Path(__file__).resolve().parents[2]
SAGECAL = ROOT / "examples" / "sagecal-openstack.yaml"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTROSTACK_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


@pytest.fixture
def spec():
    return parse_spec(starter_spec(cloud="kasi"))


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_spec_init_then_render_into_the_same_folder_keeps_the_users_spec(capsys, tmp_path):
    """The data loss the issue saw: `render cluster.yaml -o .` overwrote the spec with the Heat template."""
    assert run(capsys, "spec", "init", "cluster.yaml", "--cloud", "kasi")[0] == 0
    mine = (tmp_path / "cluster.yaml").read_text()

    code, _, err = run(capsys, "render", "cluster.yaml", "-o", ".")

    assert code == EXIT_INVALID_INPUT
    line = error_line(err)
    assert line.startswith("error: cluster.yaml: exists and was not written by astrostack render")
    assert (tmp_path / "cluster.yaml").read_text() == mine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.yaml"]  # nothing written at all


def test_rendering_again_into_the_same_folder_replaces_what_the_render_wrote(spec, tmp_path):
    first = render(spec, tmp_path / "out")
    changed = spec.model_copy(update={"nodes": 24})

    second = render(changed, tmp_path / "out")

    assert second.files() == first.files()
    assert yaml.safe_load(second.environment.read_text())["parameters"]["cluster_name"] == spec.name
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["written_by"] == "astrostack render" and manifest["spec_hash"] == changed.spec_hash()
    assert set(manifest["files"]) == {str(p.relative_to(tmp_path / "out")) for p in second.files()}


def test_a_rendered_file_changed_since_is_not_overwritten(spec, tmp_path):
    rendered = render(spec, tmp_path / "out")
    rendered.environment.write_text(rendered.environment.read_text() + "# my edit\n")

    with pytest.raises(InvalidInput, match=r"environment\.yaml: exists and was not written by astrostack render"):
        render(spec.model_copy(update={"nodes": 24}), tmp_path / "out")
    assert rendered.environment.read_text().endswith("# my edit\n")


def test_a_file_identical_to_what_would_be_written_is_no_loss(spec, tmp_path):
    render(spec, tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "cluster.yaml").write_bytes((tmp_path / "a" / "cluster.yaml").read_bytes())

    render(spec, tmp_path / "b")
    assert (tmp_path / "b" / MANIFEST).is_file()


def test_a_link_in_the_output_folder_is_never_followed(spec, tmp_path):
    precious = tmp_path / "precious.yaml"
    precious.write_text("mine\n")
    (tmp_path / "out" / "user-data").mkdir(parents=True)
    (tmp_path / "out" / "user-data" / "nfs.yaml").symlink_to(precious)

    with pytest.raises(InvalidInput, match=r"user-data/nfs\.yaml: exists and was not written"):
        render(spec, tmp_path / "out")
    assert precious.read_text() == "mine\n"


def test_a_linked_subfolder_is_refused(spec, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "lib").symlink_to(elsewhere)

    with pytest.raises(InvalidInput, match=r"lib/worker\.yaml"):
        render(spec, tmp_path / "out")
    assert not list(elsewhere.iterdir())


def test_the_error_counts_every_foreign_file(spec, tmp_path):
    (tmp_path / "out").mkdir()
    for name in ("cluster.yaml", "environment.yaml"):
        (tmp_path / "out" / name).write_text("mine\n")

    with pytest.raises(InvalidInput, match=r"\(and 1 more\)"):
        render(spec, tmp_path / "out")


def test_a_manifest_astrostack_did_not_write_leaves_the_folder_alone(spec, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / MANIFEST).write_text('{"files": {"x": "y"}}')

    with pytest.raises(InvalidInput, match="is not a manifest astrostack render wrote"):
        render(spec, tmp_path / "out")


def test_files_of_an_earlier_render_no_longer_written_are_removed_if_untouched(spec, tmp_path):
    out = tmp_path / "out"
    render(spec, out)
    manifest = json.loads((out / MANIFEST).read_text())
    (out / "lib" / "old.yaml").write_text("old\n")
    import hashlib

    manifest["files"]["lib/old.yaml"] = hashlib.sha256(b"old\n").hexdigest()
    (out / MANIFEST).write_text(json.dumps(manifest))
    (out / "notes.txt").write_text("the user's\n")

    render(spec, out)

    assert not (out / "lib" / "old.yaml").exists() and (out / "notes.txt").read_text() == "the user's\n"


def test_render_with_a_public_key_puts_it_in_the_environment(capsys, tmp_path):
    (tmp_path / "id.pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB me@laptop\n")

    code, _, err = run(capsys, "render", SAGECAL, "-o", "out", "--ssh-public-key", "id.pub")

    assert (code, err) == (0, "")
    parameters = yaml.safe_load((tmp_path / "out" / "environment.yaml").read_text())["parameters"]
    assert parameters["ssh_public_key"] == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB me@laptop"


def test_render_without_a_key_says_so_in_the_environment_and_on_stderr(capsys, tmp_path):
    code, _, err = run(capsys, "render", SAGECAL, "-o", "out")

    assert code == 0
    assert [line for line in err.splitlines() if line] == [
        "warning: out/environment.yaml gives the servers no SSH key: pass --ssh-public-key FILE, or set "
        "ssh.keypair (`astrostack up` makes a key of its own)"]
    assert "# No SSH key" in (tmp_path / "out" / "environment.yaml").read_text()


@pytest.mark.parametrize("content", ["", "not a key\n", "ssh-ed25519 AAAA a\nssh-rsa BBBB b\n"])
def test_a_bad_public_key_file_is_one_line(capsys, tmp_path, content):
    (tmp_path / "id.pub").write_text(content)

    code, _, err = run(capsys, "render", SAGECAL, "-o", "out", "--ssh-public-key", "id.pub")

    assert code == EXIT_INVALID_INPUT
    assert "not one OpenSSH public key line" in error_line(err)
    assert not (tmp_path / "out").exists()


def test_render_reads_the_spec_from_standard_input(capsys, tmp_path, monkeypatch):
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(SAGECAL.read_bytes())))
    code, _, _ = run(capsys, "render", "-", "-o", "out")

    assert code == 0 and (tmp_path / "out" / "environment.yaml").is_file()
