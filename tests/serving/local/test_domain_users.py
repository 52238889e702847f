"""`local.run_as`: which directories a domain's user gets, what it must reach, and refusals
that name what to change (serving/local/domain_users.py). The whole thing running is in
tests/serving/test_e2e_domain_users.py."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from serving.config import ConfigError, load_config
from serving.config.cluster_layout import DomainCluster, local_clusters
from serving.config.schema import PlatformConfig
from serving.local.domain_users import (DomainUser, DomainUserError, check_reach, check_separate, domain_user,
                                        hand_over, needed_paths, private_dirs)
from serving.local.ray_head import cluster_environment

NOBODY = DomainUser("nobody", 65534, 65534)
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="changes owners and runs as another user: needs root")


@pytest.fixture(autouse=True)
def own_temp_dirs(tmp_path, monkeypatch):
    """The clusters' temp directories in the test's own (not /tmp/fabriek-ray-*, a `make serve`'s)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()


def _config(tmp_path: Path, **local) -> PlatformConfig:
    base = load_config(None)
    return base.model_copy(update={
        "local": base.local.model_copy(update={"run_as": "fabriek-{domain}",
                                               "ray_token_file": str(tmp_path / "{domain}" / "ray-token"), **local}),
        "auth": base.auth.model_copy(update={"key_file": str(tmp_path / "{domain}" / "api-keys.json"),
                                             "cache_salt_secret_file": str(tmp_path / "{domain}" / "salt")}),
        "ledger": base.ledger.model_copy(update={"url": f"sqlite:///{tmp_path}/{{domain}}/usage.db"})})


@pytest.mark.parametrize("template, error", [("fabriek", "has no `{domain}`"),
                                             ("Fabriek-{domain}", "lower-case"), ("fab riek-{domain}", "lower-case")])
def test_the_user_template_is_checked(tmp_path, template, error):
    shipped = load_config(None).model_dump(mode="json", by_alias=True, exclude_none=True)
    shipped["local"]["run_as"] = template
    path = tmp_path / "platform.yaml"
    import yaml

    path.write_text(yaml.safe_dump(shipped))
    with pytest.raises(ConfigError, match=error):
        load_config(path)


def test_each_domain_gets_its_user_and_its_own_directories(tmp_path):
    config = _config(tmp_path)
    government, commercial = local_clusters(config)
    assert (government.user, commercial.user) == ("fabriek-government", "fabriek-commercial")
    assert private_dirs(config, government) == [government.temp_dir, government.haproxy_dir, tmp_path / "government"]
    assert government.haproxy_dir.parent == government.temp_dir.parent
    check_separate(config, [government, commercial])


def test_a_directory_two_domains_would_share_is_refused(tmp_path):
    config = _config(tmp_path)
    shared = config.model_copy(update={"ledger": config.ledger.model_copy(
        update={"url": f"sqlite:///{tmp_path}/ledgers/{{domain}}.db"})})
    with pytest.raises(DomainUserError, match=f"{tmp_path}/ledgers holds files of both the government and the commercial"):
        check_separate(shared, local_clusters(shared))


def test_haproxys_files_are_the_domains_own_and_their_socket_paths_fit(tmp_path):
    config = _config(tmp_path)
    government, commercial = local_clusters(config)
    environment = cluster_environment(config, government)
    assert environment["RAY_SERVE_HAPROXY_SOCKET_PATH"] == str(government.haproxy_dir / "admin.sock")
    assert environment["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"] == str(government.haproxy_dir / "haproxy.cfg")
    assert government.haproxy_dir != commercial.haproxy_dir
    assert government.haproxy_dir in private_dirs(config, government)
    usual = DomainCluster(**{**government.__dict__, "temp_dir": Path("/tmp/fabriek-ray-government-65535")})
    # HAProxy refuses a socket path over 97 bytes (seen: "metrics.sock' too long (max 97)").
    assert len(str(usual.haproxy_dir / ("0" * 56) / "metrics.sock")) <= 97


def test_the_user_must_pass_through_every_directory_above_its_own(tmp_path):
    config = _config(tmp_path)
    [government, _] = local_clusters(config)
    needed = dict(needed_paths(config, government, [tmp_path / "model"]))
    assert needed[str(tmp_path)] == needed["/"] == "enter"
    assert str(government.temp_dir) not in needed  # its own: handed over
    assert needed[str(tmp_path / "model")] == "read"


@as_root
def test_what_the_user_cannot_reach_is_named(python_reachable_by_other_users):
    # Not in tmp_path: pytest keeps that below a 0700 directory of root's.
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    os.chmod(base, 0o755)
    closed = base / "closed"
    closed.mkdir(mode=0o700)
    (closed / "model.safetensors").write_text("weights")
    with pytest.raises(DomainUserError, match=f"nobody cannot reach {closed}/model.safetensors.*FABRIEK_HOME"):
        check_reach(NOBODY, [(str(closed / "model.safetensors"), "read")])
    check_reach(NOBODY, [(str(base), "enter")])
    shutil.rmtree(base)


@as_root
def test_hand_over_gives_the_directories_and_their_files_to_the_user(tmp_path):
    os.chmod(tmp_path, 0o755)
    config = _config(tmp_path)
    [government, _] = local_clusters(config)
    (tmp_path / "government").mkdir(mode=0o755)
    (tmp_path / "government" / "api-keys.json").write_text("{}")
    hand_over(config, government, NOBODY)
    for path in (tmp_path / "government", tmp_path / "government" / "api-keys.json", government.temp_dir,
                 government.haproxy_dir):
        assert os.stat(path).st_uid == NOBODY.uid, path
    assert stat.S_IMODE(os.stat(tmp_path / "government").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(government.temp_dir).st_mode) == 0o700


def test_root_is_no_domain_user():
    with pytest.raises(DomainUserError, match="is root"):
        domain_user("root")
    with pytest.raises(DomainUserError, match="longer than 32"):
        domain_user("fabriek-" + "x" * 40)
