"""exports(5) as the NFS substitute reads it (astrostack_localcloud.nova.exports)."""

from __future__ import annotations

import pytest

from astrostack_localcloud.nova.exports import (
    Access,
    ExportsError,
    find_access,
    is_exported,
    merge_options,
    parse_exports,
)

PRODUCT_LINE = "/export 10.20.0.0/24(rw,sync,no_subtree_check,no_root_squash)\n"


def test_the_products_export_line_admits_the_subnet_read_write():
    exports = parse_exports(PRODUCT_LINE)

    assert find_access(exports, "/export", ("10.20.0.7",), ("node-1",)) == Access("/export", read_only=False)


def test_an_address_outside_the_client_list_is_not_admitted():
    exports = parse_exports(PRODUCT_LINE)

    assert find_access(exports, "/export", ("10.20.1.7",), ("node-1",)) is None
    assert is_exported(exports, "/export")


def test_a_subdirectory_of_an_export_is_reachable_and_other_paths_are_not_exported():
    exports = parse_exports(PRODUCT_LINE)

    assert find_access(exports, "/export/jobs/", ("10.20.0.7",), ()) == Access("/export", False)
    assert not is_exported(exports, "/exported")
    assert not is_exported(exports, "/srv")


def test_a_client_without_options_gets_exportfs_defaults_which_are_read_only():
    (export,) = parse_exports("/data client-a\n")

    assert export.clients[0].read_only
    assert "root_squash" in export.clients[0].options


def test_later_options_replace_their_opposites():
    assert merge_options(("ro", "sync", "root_squash"), ("rw", "async", "no_root_squash", "fsid=1"), ("fsid=0",)) == (
        "rw", "async", "no_root_squash", "fsid=0")


def test_line_defaults_comments_continuations_and_quoted_paths():
    text = ('# the cluster share\n'
            '"/srv/my share" -rw *.cluster.local(ro) \\\n'
            '    10.0.0.5   # the head node\n'
            '/pub (ro)\n')

    first, second = parse_exports(text)

    assert first.path == "/srv/my share"
    assert [(rule.pattern, rule.read_only) for rule in first.clients] == [("*.cluster.local", True), ("10.0.0.5", False)]
    assert [(rule.pattern, rule.read_only) for rule in second.clients] == [("*", True)]


def test_hostname_patterns_match_the_clients_name_and_netgroups_never_match():
    exports = parse_exports("/a node-*(rw) @cluster(rw)\n")

    assert find_access(exports, "/a", ("192.0.2.1",), ("node-3",)) == Access("/a", False)
    assert find_access(exports, "/a", ("192.0.2.1",), ("head",)) is None


def test_the_first_matching_client_entry_decides():
    exports = parse_exports("/a 10.0.0.5(ro) 10.0.0.0/24(rw)\n")

    assert find_access(exports, "/a", ("10.0.0.5",), ()).read_only
    assert not find_access(exports, "/a", ("10.0.0.6",), ()).read_only


def test_the_longest_covering_export_decides():
    exports = parse_exports("/srv *(ro)\n/srv/rw 10.0.0.0/8(rw)\n")

    assert find_access(exports, "/srv/rw/x", ("10.1.2.3",), ()) == Access("/srv/rw", False)
    assert find_access(exports, "/srv/other", ("10.1.2.3",), ()) == Access("/srv", True)


@pytest.mark.parametrize("line", ["relative/path *(rw)\n", "/a host(rw\n"])
def test_bad_lines_are_named(line):
    with pytest.raises(ExportsError, match="exports line 1"):
        parse_exports(line)


def test_an_empty_exports_text_exports_nothing():
    assert parse_exports("\n# nothing\n") == ()
