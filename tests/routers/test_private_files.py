"""Key files and the cache-salt secret: 0600 files, in directories fabriek creates 0700."""

from __future__ import annotations

import os
import stat

import pytest

from routers.cache_salt import load_or_create_secret
from routers.key_file import KeyFile, make_private_dir


# nobody's uid and gid on Debian; any user other than root would do.
NOBODY = 65534


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_make_private_dir_creates_every_missing_directory_0700_and_leaves_others(tmp_path):
    os.chmod(tmp_path, 0o755)
    make_private_dir(tmp_path / "a" / "b")
    assert [_mode(tmp_path / "a"), _mode(tmp_path / "a" / "b")] == [0o700, 0o700]
    assert _mode(tmp_path) == 0o755
    make_private_dir(tmp_path / "a" / "b")  # again: nothing to do, no error


def test_key_file_and_its_lock_are_0600_in_new_0700_directories(tmp_path):
    old_umask = os.umask(0o022)  # the common default, which would give 0644 and 0755
    try:
        keys = KeyFile(tmp_path / "domains" / "government" / "api-keys.json")
        keys.create("gov-demo", {"gov-demo"})
    finally:
        os.umask(old_umask)
    assert _mode(keys.path) == 0o600
    assert _mode(keys.path.with_name("api-keys.json.lock")) == 0o600
    assert _mode(tmp_path / "domains") == _mode(tmp_path / "domains" / "government") == 0o700


def test_cache_salt_secret_is_0600_in_new_0700_directories(tmp_path):
    old_umask = os.umask(0o022)
    try:
        path = tmp_path / "domains" / "government" / "cache-salt.secret"
        load_or_create_secret(path)
    finally:
        os.umask(old_umask)
    assert _mode(path) == 0o600
    assert _mode(tmp_path / "domains") == _mode(path.parent) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="writes as root into another user's directory")
def test_root_writing_into_a_domain_users_directory_leaves_the_files_that_users(tmp_path):
    """`fabriek keys create` as root beside a domain that runs as its own user
    (`local.run_as`): the replaced key file, its lock and a new salt stay the domain's."""
    directory = tmp_path / "government"
    directory.mkdir(mode=0o700)
    os.chown(directory, NOBODY, NOBODY)
    keys = KeyFile(directory / "api-keys.json")
    keys.create("gov-demo", {"gov-demo"})
    keys.create("gov-demo", {"gov-demo"})  # replaced: a new file
    load_or_create_secret(directory / "cache-salt.secret")
    for name in ("api-keys.json", "api-keys.json.lock", "cache-salt.secret"):
        info = os.stat(directory / name)
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (NOBODY, NOBODY, 0o600), name
    # In a directory of root's own, root's files stay root's.
    KeyFile(tmp_path / "root" / "api-keys.json").create("gov-demo", {"gov-demo"})
    assert os.stat(tmp_path / "root" / "api-keys.json").st_uid == 0
