"""pyfed.fd_limits: the default max_connections comes from this process's open-file limit."""

from __future__ import annotations

import pytest

from pyfed.server import fd_limits as limits

resource = pytest.importorskip("resource")


@pytest.fixture
def soft_limit():
    """Set this process's soft RLIMIT_NOFILE for one test (the hard limit is left alone, so
    the old soft limit can always be restored)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def set_soft(value: int) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (value, hard))

    try:
        yield set_soft
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_default_max_connections_leaves_room_for_the_servers_own_files(soft_limit):
    soft_limit(1024)
    assert limits.open_file_limit() == 1024
    expected = (1024 - limits.open_descriptors() - limits.FD_HEADROOM) // 2
    assert abs(limits.default_max_connections() - expected) <= 1  # a descriptor may come or go
    assert limits.default_max_connections() <= (1024 - limits.FD_HEADROOM) // 2


def test_a_tiny_limit_still_allows_one_connection(soft_limit):
    soft_limit(max(limits.open_descriptors() + 8, 16))
    assert limits.default_max_connections() == 1


def test_open_descriptors_counts_a_new_file(tmp_path):
    before = limits.open_descriptors()
    with open(tmp_path / "x", "w"):
        assert limits.open_descriptors() == before + 1
