"""Property-based: random and mutated specs, jobs and matrices fed to the CLI.

Whatever the file holds, the command answers with exit 0 or 2, at most one
line on stderr (an `error:` line for exit 2), no traceback, in bounded time.
Specs go through `spec show` and `render`, jobs and matrices through
`validate`; the starting points are the examples, mutated as values (any
field set to any value, removed, or added) and as text (characters inserted,
lines repeated, the file cut short), plus arbitrary bytes.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from astrostack.cli.main import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SPECS = [yaml.safe_load((EXAMPLES / name).read_text()) for name in ("local.yaml", "sagecal-openstack.yaml")]
JOBS = [
    {"profile": "mpi", "command": ["/usr/local/bin/mpi_smoke"], "np": 4, "timeout_s": 600},
    {"profile": "sagecal-mpi", "ms": "data/*.MS", "sky_model": "data/3c196.sky.txt",
     "cluster_file": "data/3c196.sky.txt.cluster", "workers": 2},
]
MATRICES = [
    {"name": "m", "spec": SPECS[0], "points": [{"hosts": 3, "nodes": 12}, {"hosts": 3, "nodes": 24}],
     "repeats": 2, "job": JOBS[0]},
    {"name": "t", "spec": str(EXAMPLES / "sagecal-openstack.yaml"), "spec_overrides": {"overlay": {"subnet": "10.0.8.0/22"}},
     "points": [{"hosts": 4, "nodes": 32}], "job": JOBS[1]},
]
SECONDS = 10  # per command; a usual answer takes well under 0.1 s
SETTINGS = settings(max_examples=40, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

NASTY_TEXT = st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!|>#%@`'\"\\,?~ \t\n") +
                                              ["\x00", "\x1b", "\x07", "\u202e", "\ufeff", "\u00e9", "\u0663"]),
                     max_size=12)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40), NASTY_TEXT,
    st.sampled_from(["0755", "0x1f", "1_000", "1:30", "yes", "no", "0.0.0.0/0", "127.0.0.0/8", "/etc", "/",
                     "10.0.9.0/24", "auto", "swarm", "mpi", "local", "-1", "99999999999999999999", "*" * 300]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)


def paths_of(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a nested mapping (lists by index)."""
    found = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            found += paths_of(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += paths_of(value, (*prefix, index))
    return found


@st.composite
def mutated(draw, bases: list[dict]) -> Any:
    data = yaml.safe_load(yaml.safe_dump(draw(st.sampled_from(bases))))  # a deep copy
    for _ in range(draw(st.integers(1, 3))):
        paths = paths_of(data)
        how = draw(st.sampled_from(["set", "delete", "add", "replace-all"]))
        if how == "replace-all":
            return draw(VALUES)
        if not paths:
            continue
        path = draw(st.sampled_from(paths))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        if how == "set":
            parent[path[-1]] = draw(VALUES)
        elif how == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(VALUES)
    return data


@st.composite
def yaml_text(draw, bases: list[dict]) -> bytes:
    """A file: a mutated document as YAML, then perhaps mutated as text too, or arbitrary bytes."""
    kind = draw(st.sampled_from(["value", "value", "text", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    text = yaml.safe_dump(draw(mutated(bases)), allow_unicode=draw(st.booleans()), sort_keys=False)
    if kind == "text":
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(text)))
            edit = draw(st.sampled_from(["insert", "repeat-line", "cut"]))
            if edit == "insert":
                text = text[:at] + draw(NASTY_TEXT) + text[at:]
            elif edit == "repeat-line":
                lines = text.splitlines(keepends=True) or [""]
                line = draw(st.integers(0, len(lines) - 1))
                text = "".join(lines[: line + 1] + [lines[line]] + lines[line + 1:])
            else:
                text = text[:at]
    return text.encode("utf-8", errors="surrogatepass")


def answer(argv: list[str], home: str) -> tuple[int, str, str, float]:
    out, err = io.StringIO(), io.StringIO()
    previous = os.environ.get("ASTROSTACK_HOME")
    os.environ["ASTROSTACK_HOME"] = home
    started = time.monotonic()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        if previous is None:
            os.environ.pop("ASTROSTACK_HOME", None)
        else:
            os.environ["ASTROSTACK_HOME"] = previous
    return code, out.getvalue(), err.getvalue(), time.monotonic() - started


def check(content: bytes, *commands: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="astrostack-prop-") as tmp:
        path = Path(tmp) / "input.yaml"
        path.write_bytes(content)
        for command in commands:
            argv = [part.format(file=path, tmp=tmp) for part in command]
            code, _, err, seconds = answer(argv, os.path.join(tmp, "home"))
            lines = [line for line in err.splitlines() if line.strip()]
            assert "Traceback" not in err, (argv, err)
            assert code in (0, 2), (argv, code, err)
            assert len(lines) <= 1, (argv, err)
            if code == 2:
                assert lines and lines[0].startswith("error: "), (argv, err)
            assert seconds < SECONDS, (argv, seconds)


@SETTINGS
@given(content=yaml_text(SPECS))
def test_any_spec_gets_exit_0_or_2_and_one_line(content):
    check(content, ["spec", "show", "{file}"], ["render", "{file}", "-o", "{tmp}/out", "--json"])


@SETTINGS
@given(content=yaml_text(JOBS))
def test_any_job_gets_exit_0_or_2_and_one_line(content):
    check(content, ["validate", "{file}"])


@SETTINGS
@given(content=yaml_text(MATRICES))
def test_any_matrix_gets_exit_0_or_2_and_one_line(content):
    check(content, ["validate", "{file}", "--json"])


@settings(max_examples=25, deadline=None, database=None)
@given(field=st.sampled_from(["hosts", "nodes", "name", "cloud", "mode", "tags", "nfs", "ssh", "timeouts"]),
       value=VALUES)
def test_any_value_of_any_field_of_a_valid_spec_gets_exit_0_or_2(field, value):
    data = {**SPECS[1], field: value}
    check(yaml.safe_dump(data).encode(), ["spec", "show", "{file}"])
