"""Reading the user's YAML files (specs, matrices, jobs) with one-line errors.

Every file a user hands astrostack goes through :func:`read_yaml`, which
answers in bounded time and memory whatever it is given:

- only regular files (or ``-``, standard input) of at most :data:`MAX_BYTES`,
  in UTF-8; FIFOs, devices, folders, symlink loops, paths through a file and
  over-long names each get one line saying so;
- at most :data:`MAX_DEPTH` levels of nesting and :data:`MAX_NODES` values
  once aliases are expanded (an alias bomb stops at the limit, it is never
  expanded); an alias may not refer to a node that contains it;
- duplicate keys are refused (YAML says keys are unique; PyYAML would keep
  the last one silently);
- plain scalars resolve as in YAML 1.2's core schema, not 1.1: ``true`` and
  ``false`` are the only booleans (``yes``, ``no``, ``on``, ``off`` stay
  text), dates stay text, and numbers that YAML 1.1 and 1.2 read differently
  (``0755`` is 493 in 1.1 and 755 in 1.2; ``0x1f``, ``1_000``, ``1:30``) are
  refused, naming the line, instead of guessed.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any, BinaryIO, Union

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, ScalarNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from astrostack.errors import InvalidInput, quote, show_path

MAX_BYTES = 256 * 1024  # a spec is about 2 KiB; the pure-Python parser reads 256 KiB in about a second
MAX_DEPTH = 32
MAX_NODES = 50_000
STDIN = "-"

PathLike = Union[str, Path]

AMBIGUOUS_NUMBER = "tag:astrostack,2026:ambiguous-number"
_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"


class _Resolver(BaseResolver):
    """YAML 1.2 core schema for plain scalars, plus merge keys and a tag for numbers 1.1 reads otherwise."""


_Resolver.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Resolver.add_implicit_resolver(_INT, re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789"))
_Resolver.add_implicit_resolver(
    AMBIGUOUS_NUMBER,
    re.compile(r"""^[-+]?(?:0[0-9_]+                      # leading zero: octal in YAML 1.1
                        |0[xXoObB][0-9a-fA-F_]+           # other bases
                        |[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?  # base 60 in YAML 1.1
                        |[0-9][0-9]*_[0-9_]*)$            # digit separators
                """, re.X),
    list("-+0123456789"),
)
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)
_Resolver.add_implicit_resolver(_MERGE, re.compile(r"^<<$"), ["<"])
_Resolver.add_implicit_resolver(_NULL, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])


class _BoundedComposer(Composer):
    """PyYAML's composer with limits on depth, expanded size, recursion and duplicate keys."""

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0
        self._sizes: dict[int, int] = {}

    def compose_document(self):  # noqa: ANN201 (PyYAML's signature)
        self._sizes = {}
        return super().compose_document()

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self._sizes:
                raise ComposerError(None, None, f"alias *{event.anchor} refers to a node that contains it",
                                    event.start_mark)
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._sizes[id(node)] = size = 1 + sum(self._sizes.get(id(child), 1) for child in _children(node))
        if size > MAX_NODES:
            raise ComposerError(None, None, f"holds more than {MAX_NODES} values once its aliases are expanded",
                                node.start_mark)
        return node

    def compose_mapping_node(self, anchor):  # noqa: ANN001, ANN201
        node = super().compose_mapping_node(anchor)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            if not isinstance(key_node, ScalarNode):
                raise ComposerError(None, None, "a key must be a plain value, not a list or a mapping",
                                    key_node.start_mark)
            key = _key_identity(key_node)
            if key in seen:
                raise ComposerError(None, None, f"duplicate key {quote(key_node.value)}", key_node.start_mark)
            seen.add(key)
        return node


def _children(node: Any) -> list[Any]:
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, ScalarNode):
        return []
    return list(node.value)


def _key_identity(node: ScalarNode) -> tuple[str, Any]:
    """What two keys must share to be the same key once constructed."""
    if node.tag == _BOOL:
        return node.tag, node.value.lower()
    if node.tag == _INT and node.style is None and len(node.value) <= 20:
        return node.tag, int(node.value)
    if node.tag == _NULL:
        return node.tag, None
    return node.tag, node.value


class _Constructor(SafeConstructor):
    def construct_ambiguous_number(self, node: ScalarNode) -> Any:
        raise ConstructorError(None, None, f"{quote(node.value)} is a number YAML 1.1 and 1.2 read differently "
                               "(octal, another base, base 60 or digit separators): write a plain decimal number, "
                               "or quote it if it is text", node.start_mark)

    def construct_bounded_int(self, node: ScalarNode) -> int:
        try:
            return SafeConstructor.construct_yaml_int(self, node)
        except ValueError:
            raise ConstructorError(None, None, f"{quote(node.value)} is not a usable integer",
                                   node.start_mark) from None


_Constructor.add_constructor(AMBIGUOUS_NUMBER, _Constructor.construct_ambiguous_number)
_Constructor.add_constructor(_INT, _Constructor.construct_bounded_int)


class BoundedLoader(Reader, Scanner, Parser, _BoundedComposer, _Constructor, _Resolver):
    """The one loader for user files (see the module docstring)."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        _BoundedComposer.__init__(self)
        _Constructor.__init__(self)
        _Resolver.__init__(self)


# Parsing ---------------------------------------------------------------------


def parse_yaml(text: str, source: str, error: type[InvalidInput] = InvalidInput) -> Any:
    """YAML text -> data; any problem becomes ERROR naming SOURCE and the line."""
    if len(text) > MAX_BYTES:
        raise error(f"{source}: is over {MAX_BYTES // 1024} KiB, larger than any astrostack file should be")
    loader = None
    try:
        loader = BoundedLoader(text)
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        raise error(f"{source}: {_where(exc.problem_mark or exc.context_mark)}is not valid YAML "
                    f"({_problem(exc)})") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise error(f"{source}: line {line} is not valid YAML (character {_code_point(exc.character)} "
                    "is not allowed in YAML text)") from None
    except (yaml.YAMLError, RecursionError) as exc:  # RecursionError: a guard; depth is bounded above
        raise error(f"{source}: is not valid YAML ({exc.__class__.__name__})") from None
    finally:
        if loader is not None:
            loader.dispose()


def _code_point(character: Any) -> str:
    return f"U+{character if isinstance(character, int) else ord(character):04X}"


def _where(mark: Any) -> str:
    return f"line {mark.line + 1} " if mark is not None else ""


def _problem(exc: yaml.MarkedYAMLError) -> str:
    problem = str(exc.problem or exc.context or exc.__class__.__name__)
    return problem.splitlines()[0] if problem.strip() else exc.__class__.__name__


# Reading ---------------------------------------------------------------------


def read_yaml(path: PathLike, what: str, error: type[InvalidInput] = InvalidInput) -> Any:
    """A YAML file (or ``-``: standard input) -> data; any problem becomes ERROR in one line."""
    source = "<stdin>" if str(path) == STDIN else show_path(path)
    return parse_yaml(read_text(path, what, error), source, error)


def read_text(path: PathLike, what: str, error: type[InvalidInput] = InvalidInput) -> str:
    """The UTF-8 text of a regular file of at most MAX_BYTES, or of standard input for ``-``."""
    if str(path) == STDIN:
        return _read_stdin(what, error)
    shown = show_path(path)
    try:
        _check_kind(os.stat(path), shown, what, error)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise error(f"{shown}: no such {what} file") from None
    except (OSError, ValueError) as exc:
        raise error(f"{shown}: cannot read the {what}: {_os_reason(exc)}") from None
    with os.fdopen(fd, "rb") as handle:
        _check_kind(os.fstat(fd), shown, what, error)  # what was opened, should it have changed since
        try:
            data = _read_bounded(handle, shown, what, error)
        except OSError as exc:
            raise error(f"{shown}: cannot read the {what}: {_os_reason(exc)}") from None
    return _decode(data, shown, what, error)


def _read_stdin(what: str, error: type[InvalidInput]) -> str:
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # replaced by a text stream (tests, embedding programs)
        text = sys.stdin.read(MAX_BYTES + 1) if sys.stdin is not None else ""
        if len(text) > MAX_BYTES:
            raise error(f"<stdin>: cannot read the {what}: it is over the {MAX_BYTES // 1024} KiB "
                        "an astrostack file may have")
        return text
    try:
        data = _read_bounded(stream, "<stdin>", what, error)
    except OSError as exc:
        raise error(f"<stdin>: cannot read the {what}: {_os_reason(exc)}") from None
    return _decode(data, "<stdin>", what, error)


def _check_kind(status: os.stat_result, shown: str, what: str, error: type[InvalidInput]) -> None:
    mode = status.st_mode
    if stat.S_ISREG(mode):
        if status.st_size > MAX_BYTES:
            raise error(f"{shown}: cannot read the {what}: it is {status.st_size} bytes, over the "
                        f"{MAX_BYTES // 1024} KiB an astrostack file may have")
        return
    kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file")
    raise error(f"{shown}: cannot read the {what}: it is {kind}, not a file")


def _read_bounded(handle: BinaryIO, shown: str, what: str, error: type[InvalidInput]) -> bytes:
    data = handle.read(MAX_BYTES + 1)
    if data is not None and len(data) > MAX_BYTES:
        raise error(f"{shown}: cannot read the {what}: it is over the {MAX_BYTES // 1024} KiB "
                    "an astrostack file may have")
    return data or b""


def _decode(data: bytes, shown: str, what: str, error: type[InvalidInput]) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{shown}: cannot read the {what}: it is not UTF-8 text "
                    f"(byte {data[exc.start]:#04x} at offset {exc.start})") from None


_OS_REASONS = {
    errno.ELOOP: "a loop of symbolic links",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "it is a directory, not a file",
}


def _os_reason(exc: Exception) -> str:
    if isinstance(exc, ValueError):  # e.g. an embedded NUL byte
        return "the path is not a valid file name"
    code = getattr(exc, "errno", None)
    return _OS_REASONS.get(code, getattr(exc, "strerror", None) or exc.__class__.__name__)
