"""The cache salt secret: created once, 0600, shared by concurrent first starts."""

from __future__ import annotations

import os
import stat

import pytest

from routers.cache_salt import load_or_create_secret


def test_secret_is_created_once_and_then_read(tmp_path):
    path = tmp_path / "dir" / "salt.secret"
    first = load_or_create_secret(path)
    assert len(first) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_secret(path) == first
    assert sorted(p.name for p in path.parent.iterdir()) == ["salt.secret"]


@pytest.mark.parametrize("content", ["not hex", "abcd"])
def test_bad_secret_is_a_clear_error(tmp_path, content):
    path = tmp_path / "salt.secret"
    path.write_text(content)
    with pytest.raises(ValueError, match="salt.secret"):
        load_or_create_secret(path)
