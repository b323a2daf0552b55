"""The one reader of the user's YAML files: whatever it is given, one line of
InvalidInput naming the file (and the line), in bounded time and memory."""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import pytest

from astrostack.errors import InvalidInput
from astrostack.yamlio import MAX_BYTES, MAX_DEPTH, parse_yaml, read_text, read_yaml


def problem(text: str) -> str:
    with pytest.raises(InvalidInput) as caught:
        parse_yaml(text, "f.yaml")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("f.yaml: ")
    return message


def unreadable(path, what: str = "spec") -> str:
    with pytest.raises(InvalidInput) as caught:
        read_yaml(path, what)
    message = str(caught.value)
    assert "\n" not in message
    return message


def billion_laughs(levels: int = 9) -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        previous, name = chr(ord("a") + level - 1), chr(ord("a") + level)
        lines.append(f"{name}: &{name} [{', '.join(f'*{previous}' for _ in range(9))}]")
    return "\n".join(lines) + "\n"


# Bounded -------------------------------------------------------------------------


def test_an_alias_bomb_stops_at_the_limit_at_once():
    started = time.monotonic()
    message = problem(billion_laughs())
    assert time.monotonic() - started < 1
    assert "more than 50000 values once its aliases are expanded" in message


def test_aliases_and_merge_keys_below_the_limit_still_work():
    data = parse_yaml("base: &b {x: 1, y: 2}\nother: {<<: *b, y: 3}\nlist: [*b, *b]\n", "f.yaml")
    assert data["other"] == {"x": 1, "y": 3} and data["list"] == [{"x": 1, "y": 2}] * 2


@pytest.mark.parametrize("text", ["a: &a [*a]\n", "a: &a {<<: *a}\n", "a: &a {k: [1, {j: *a}]}\n"])
def test_an_alias_inside_its_own_node_is_refused(text):
    assert "refers to a node that contains it" in problem(text)


@pytest.mark.parametrize("text", ["[" * 100_000, "{a: " * 50_000,
                                  "".join("  " * i + f"k{i}:\n" for i in range(MAX_DEPTH + 5))])
def test_deep_nesting_is_one_line_not_a_recursion_error(text):
    started = time.monotonic()
    assert f"nested deeper than {MAX_DEPTH} levels" in problem(text)
    assert time.monotonic() - started < 2


def test_a_file_over_the_size_cap_is_refused_without_parsing(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_BYTES + "\n")
    assert "over the 256 KiB" in unreadable(big)


def test_standard_input_over_the_size_cap_is_refused(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"#" * (MAX_BYTES + 10))))
    assert "<stdin>: cannot read the spec: it is over the 256 KiB" in unreadable("-")


def test_dash_reads_standard_input(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"name: demo\n")))
    assert read_yaml("-", "spec") == {"name": "demo"}


# What is not a readable file -------------------------------------------------------


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    started = time.monotonic()
    assert unreadable(fifo).endswith("it is a FIFO, not a file")
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero", "/dev/urandom"])
def test_a_device_is_refused(device):
    if not Path(device).exists():
        pytest.skip(f"no {device} here")
    assert unreadable(device).endswith("it is a device, not a file")


def test_a_directory_is_refused(tmp_path):
    assert unreadable(tmp_path).endswith("it is a directory, not a file")


def test_a_symlink_loop_is_named(tmp_path):
    (tmp_path / "a.yaml").symlink_to(tmp_path / "b.yaml")
    (tmp_path / "b.yaml").symlink_to(tmp_path / "a.yaml")
    assert unreadable(tmp_path / "a.yaml").endswith("a loop of symbolic links")


def test_a_path_through_a_file_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    assert unreadable(tmp_path / "file" / "spec.yaml").endswith("a part of the path is a file, not a folder")


def test_an_over_long_name_is_named(tmp_path):
    assert unreadable(tmp_path / ("x" * 300 + ".yaml")).endswith("the name is too long")


def test_a_nul_byte_in_the_path_is_named():
    assert unreadable("spec\0.yaml").endswith("the path is not a valid file name")


def test_a_missing_file_is_named(tmp_path):
    assert unreadable(tmp_path / "nope.yaml", "matrix").endswith("nope.yaml: no such matrix file")


def test_a_file_that_is_not_utf8_says_where(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    assert unreadable(latin).endswith("it is not UTF-8 text (byte 0xe9 at offset 9)")


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    marked = tmp_path / "bom.yaml"
    marked.write_bytes(b"\xef\xbb\xbfname: demo\n")
    assert read_yaml(marked, "spec") == {"name": "demo"}


def test_an_unreadable_file_is_named(tmp_path, monkeypatch):
    """As root every file is readable, so the refusal is provoked at open()."""
    spec = tmp_path / "secret.yaml"
    spec.write_text("name: demo\n")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", denied)
    assert unreadable(spec).endswith("cannot read the spec: permission denied")


def test_a_path_with_terminal_escapes_is_quoted(tmp_path):
    message = unreadable(tmp_path / "\x1b[31mred.yaml")
    assert "\x1b" not in message and "\\x1b[31mred.yaml" in message


def test_read_text_returns_the_text(tmp_path):
    (tmp_path / "k.pub").write_text("ssh-ed25519 AAAA me\n")
    assert read_text(tmp_path / "k.pub", "public key") == "ssh-ed25519 AAAA me\n"


# What YAML says ---------------------------------------------------------------------


@pytest.mark.parametrize(("text", "key"), [
    ("name: a\nname: b\n", "'name'"),
    ("{true: 1, True: 2}\n", "'True'"),
    ("a: {x: 1, x: 2}\n", "'x'"),
    ("1: a\n1: b\n", "'1'"),
])
def test_duplicate_keys_are_refused_naming_the_key_and_line(text, key):
    message = problem(text)
    assert f"duplicate key {key}" in message and "line " in message


def test_a_merge_key_may_be_overridden_by_an_explicit_one():
    assert parse_yaml("a: &a {x: 1}\nb: {<<: *a, x: 2}\n", "f.yaml")["b"] == {"x": 2}


@pytest.mark.parametrize("number", ["0755", "010", "0x1f", "0o17", "0b101", "1_000", "1:30", "-0755"])
def test_numbers_yaml_1_1_and_1_2_read_differently_are_refused(number):
    message = problem(f"hosts: {number}\n")
    assert f"'{number}' is a number YAML 1.1 and 1.2 read differently" in message and "line 1" in message


def test_quoted_numbers_stay_text():
    assert parse_yaml("a: '0755'\nb: \"1:30\"\n", "f.yaml") == {"a": "0755", "b": "1:30"}


def test_plain_scalars_follow_yaml_1_2():
    data = parse_yaml("a: yes\nb: no\nc: on\nd: true\ne: 2024-01-01\nf: 12\ng: -3\nh: 0\ni: 1.5\nj: ~\nk:\n",
                      "f.yaml")
    assert data == {"a": "yes", "b": "no", "c": "on", "d": True, "e": "2024-01-01", "f": 12, "g": -3, "h": 0,
                    "i": 1.5, "j": None, "k": None}


def test_a_huge_integer_is_one_line():
    assert "is not a usable integer" in problem("n: " + "9" * 5000 + "\n")


@pytest.mark.parametrize(("text", "what"), [
    ("name: a\x1bb\n", "character U+001B is not allowed"),
    ("a: 1\n---\nb: 2\n", "but found another document"),
    ("? [a]\n: 1\n", "a key must be a plain value"),
    ("a: !!python/object:os.system {}\n", "could not determine a constructor"),
])
def test_other_bad_yaml_is_one_line(text, what):
    assert what in problem(text)
