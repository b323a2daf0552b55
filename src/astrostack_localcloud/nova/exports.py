"""exports(5) as the NFS substitute reads it: which client may attach which tree, how.

A server VM's ``exportfs`` substitute sends the text of ``/etc/exports`` and
``/etc/exports.d/*.exports``; the hypervisor parses it here and, when a client
asks to mount ``SERVER:/path``, admits it the way exportfs would: the export
that covers the path, then the first client entry that matches one of the
client's addresses or its hostname. Options other than ``ro``/``rw`` are
kept but not enforced (root squashing is not substituted).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import posixpath
import shlex
from dataclasses import dataclass

# What exportfs gives a client without options (exports(5)).
DEFAULT_OPTIONS = ("ro", "sync", "wdelay", "hide", "no_subtree_check", "sec=sys", "secure", "root_squash",
                   "no_all_squash")
WORLD = "*"
# Options that cancel each other: the later one wins, as in exportfs.
OPPOSITES = {"ro": "rw", "sync": "async", "wdelay": "no_wdelay", "hide": "nohide",
             "subtree_check": "no_subtree_check", "secure": "insecure", "root_squash": "no_root_squash",
             "all_squash": "no_all_squash"}
OPPOSITES.update({later: earlier for earlier, later in list(OPPOSITES.items())})


class ExportsError(ValueError):
    """A line of an exports file cannot be read."""


@dataclass(frozen=True)
class ClientRule:
    pattern: str                      # *, an address, a CIDR, a hostname (wildcards allowed), @netgroup
    options: tuple[str, ...]

    @property
    def read_only(self) -> bool:
        return "rw" not in self.options

    def matches(self, addresses: tuple[str, ...], hostnames: tuple[str, ...]) -> bool:
        if self.pattern in (WORLD, ""):
            return True
        if self.pattern.startswith("@"):
            return False                  # netgroups need NIS; never admitted
        network = _as_network(self.pattern)
        if network is not None:
            return any(_in_network(address, network) for address in addresses)
        pattern = self.pattern.lower()
        return any(fnmatch.fnmatchcase(name.lower(), pattern) for name in hostnames)

    def render(self) -> str:
        return f"{self.pattern}({','.join(self.options)})"


@dataclass(frozen=True)
class Export:
    path: str
    clients: tuple[ClientRule, ...]

    def covers(self, path: str) -> bool:
        return path == self.path or path.startswith(self.path.rstrip("/") + "/")

    def rule_for(self, addresses: tuple[str, ...], hostnames: tuple[str, ...]) -> ClientRule | None:
        return next((rule for rule in self.clients if rule.matches(addresses, hostnames)), None)

    def render(self) -> str:
        path = f'"{self.path}"' if any(c.isspace() for c in self.path) else self.path
        return f"{path}\t" + " ".join(rule.render() for rule in self.clients)


@dataclass(frozen=True)
class Access:
    """What a client may attach: the export's tree and whether it is read-only."""

    export_path: str
    read_only: bool


def parse_exports(text: str) -> tuple[Export, ...]:
    """Every export of an exports(5) text, in order; ExportsError names the bad line."""
    exports = []
    for number, line in _logical_lines(text):
        try:
            exports.append(_parse_line(line))
        except ValueError as exc:
            raise ExportsError(f"exports line {number}: {exc}: {line.strip()}") from exc
    return tuple(exports)


def find_access(exports: tuple[Export, ...], path: str, addresses: tuple[str, ...],
                hostnames: tuple[str, ...]) -> Access | None:
    """The access a client (addresses, hostnames) has to PATH, or None if it is not exported to it."""
    wanted = posixpath.normpath(path)
    covering = sorted((e for e in exports if e.covers(wanted)), key=lambda e: len(e.path), reverse=True)
    for export in covering:
        rule = export.rule_for(addresses, hostnames)
        if rule is not None:
            return Access(export.path, rule.read_only)
    return None


def is_exported(exports: tuple[Export, ...], path: str) -> bool:
    wanted = posixpath.normpath(path)
    return any(export.covers(wanted) for export in exports)


def _logical_lines(text: str):
    """(first line number, text) with comments removed and backslash continuations joined."""
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0] if not raw.lstrip().startswith('"') else _strip_comment_quoted(raw)
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        pending += line
        if pending.strip():
            yield start, pending
        pending = ""
    if pending.strip():
        yield start, pending


def _strip_comment_quoted(line: str) -> str:
    """Drop a comment after a quoted path (a # inside the quotes is part of the path)."""
    closing = line.find('"', line.find('"') + 1)
    head, tail = line[: closing + 1], line[closing + 1:]
    return head + tail.split("#", 1)[0]


def _parse_line(line: str) -> Export:
    words = shlex.split(line, comments=False, posix=True)
    path = posixpath.normpath(words[0])
    if not path.startswith("/"):
        raise ValueError(f"the path {words[0]!r} is not absolute")
    defaults: tuple[str, ...] = ()
    rules = []
    for word in words[1:]:
        if word.startswith("-") and not rules:
            defaults = _options(word[1:])
        elif word.startswith("("):
            # "path (opts)" with a space: exportfs gives those options to the world.
            rules.append(ClientRule(WORLD, merge_options(DEFAULT_OPTIONS, defaults, _options(word.strip("()")))))
        else:
            rules.append(_client_rule(word, defaults))
    return Export(path, tuple(rules) or (ClientRule(WORLD, merge_options(DEFAULT_OPTIONS, defaults)),))


def _client_rule(word: str, defaults: tuple[str, ...]) -> ClientRule:
    pattern, _, options = word.partition("(")
    if options and not options.endswith(")"):
        raise ValueError(f"unbalanced parenthesis in {word!r}")
    return ClientRule(pattern, merge_options(DEFAULT_OPTIONS, defaults, _options(options.rstrip(")"))))


def _options(text: str) -> tuple[str, ...]:
    return tuple(option.strip() for option in text.split(",") if option.strip())


def merge_options(*groups: tuple[str, ...]) -> tuple[str, ...]:
    """The options of GROUPS in order, each replacing an earlier one of its name or its opposite."""
    merged: list[str] = []
    for group in groups:
        for option in group:
            name = option.split("=", 1)[0]
            merged = [kept for kept in merged if kept.split("=", 1)[0] not in (name, OPPOSITES.get(name))]
            merged.append(option)
    return tuple(merged)


def _as_network(pattern: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(pattern.strip("[]"), strict=False)
    except ValueError:
        return None


def _in_network(address: str, network) -> bool:
    try:
        return ipaddress.ip_address(address) in network
    except ValueError:
        return False
