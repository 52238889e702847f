"""Each domain's cluster as a Unix user of its own on one machine (``local.run_as``).

A cluster per domain separates the domains' Ray control planes, but processes of one Unix
user can still read each other's files, signal each other and read each other's memory
(``/proc/PID/mem``, ptrace): code execution in a commercial engine would reach the
government domain's Ray token, key hashes, salt and ledger. With ``local.run_as`` the
launcher (root) gives each domain's files and temp directory to the domain's user (0700),
checks that this user can reach what it must read (Python, fabriek, the models), and starts
the domain's process as that user; every process of its cluster inherits it.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from serving.config import BUILTIN_SCHEME, OBJECT_STORE_SCHEMES, PlatformConfig
from serving.config.cluster_layout import DomainCluster

# Linux's useradd refuses longer names.
MAX_USER_NAME = 32
# Run as the domain's user: which of the paths given (as JSON) it cannot read or write.
_REACH_CHECK = """
import json, os, sys
failures = []
for path, mode in json.loads(sys.argv[1]):
    if not os.access(path, os.R_OK if mode == "read" else os.X_OK):
        failures.append([path, mode])
print(json.dumps(failures))
"""


class DomainUserError(RuntimeError):
    """A domain cannot run as its own user (the message says why and what to change)."""


@dataclass(frozen=True)
class DomainUser:
    name: str
    uid: int
    gid: int


def domain_user(name: str) -> DomainUser:
    """The Unix user ``name``, created as a system user (its own group, no login, no home)
    if there is none.

    Raises:
        DomainUserError: not root, the name is too long, or useradd failed.
    """
    if len(name) > MAX_USER_NAME:
        raise DomainUserError(f"local.run_as gives the user name {name!r}, longer than {MAX_USER_NAME} characters")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if os.geteuid() != 0:
            raise DomainUserError(f"local.run_as: there is no user {name!r}, and only root can create one") from None
        done = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                               "--shell", "/usr/sbin/nologin", "--comment", "fabriek isolation domain", name],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise DomainUserError(f"could not create the user {name!r}: {done.stderr.strip()}") from None
        entry = pwd.getpwnam(name)
    if entry.pw_uid == 0:
        raise DomainUserError(f"local.run_as: {name!r} is root; each domain needs an ordinary user")
    return DomainUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


def private_dirs(config: PlatformConfig, cluster: DomainCluster) -> list[Path]:
    """The directories only the domain's user may use: its Ray temp directory (sockets,
    logs, HAProxy's config) and those of its Ray token, key file, salt and SQLite ledger."""
    domain = cluster.domain
    files = [cluster.token_file, config.auth.resolved_key_file(domain),
             config.auth.resolved_cache_salt_secret_file(domain)]
    ledger = config.ledger.resolved_url(domain)
    if ledger.startswith("sqlite:///"):
        files.append(Path(ledger.removeprefix("sqlite:///")))
    return list(dict.fromkeys([cluster.temp_dir, cluster.haproxy_dir, *(Path(f).resolve().parent for f in files)]))


def check_separate(config: PlatformConfig, clusters: list[DomainCluster]) -> None:
    """Raises DomainUserError when two domains would share a private directory (each user
    would lock the other out of it), or a domain's users repeat."""
    owners: dict[Path, str] = {}
    for cluster in clusters:
        for directory in private_dirs(config, cluster):
            if owners.setdefault(directory, cluster.domain) != cluster.domain:
                raise DomainUserError(
                    f"local.run_as: {directory} holds files of both the {owners[directory]} and the "
                    f"{cluster.domain} domain; give each domain a directory of its own (`{{domain}}` "
                    "in auth.key_file, auth.cache_salt_secret_file, ledger.url and local.ray_token_file)")
    users = [c.user for c in clusters]
    if len(set(users)) != len(users):
        raise DomainUserError("local.run_as must give every domain a user of its own (use `{domain}`)")


def hand_over(config: PlatformConfig, cluster: DomainCluster, user: DomainUser) -> None:
    """Make the domain's private directories (and what is in them) its user's, mode 0700."""
    for directory in private_dirs(config, cluster):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        for root, dirs, files in os.walk(directory):
            os.chown(root, user.uid, user.gid)
            for name in files:
                os.chown(os.path.join(root, name), user.uid, user.gid, follow_symlinks=False)


def home_dir(cluster: DomainCluster) -> Path:
    """The HOME of the domain's processes (vLLM's, torch's and Triton's caches): in its temp dir."""
    return cluster.temp_dir / "home"


def model_dirs(config: PlatformConfig) -> list[Path]:
    """The local directories of the config's models (built-in ones where `fabriek models
    prepare` puts them); object-store models are copied by the domain's own processes."""
    from serving.engine.default_model import builtin_model_dir

    dirs = []
    for model in config.models:
        if model.source.startswith(BUILTIN_SCHEME):
            dirs.append(builtin_model_dir(model.source.removeprefix(BUILTIN_SCHEME)))
        elif not model.source.startswith(OBJECT_STORE_SCHEMES):
            dirs.append(Path(model.source))
    return dirs


def needed_paths(config: PlatformConfig, cluster: DomainCluster, model_dirs: list[Path]) -> list[tuple[str, str]]:
    """What the domain's user must read: this Python and its packages, fabriek's code, the
    models (``model_dirs``, with every file in them), local adapters and the power meter's
    files; and the directories it must pass through to its own."""
    import serving

    private = private_dirs(config, cluster)
    # Every directory above its own that exists now: it must pass through them (those that
    # do not exist yet are made 0755 by hand_over).
    above = {a for d in private for a in d.parents if a.exists() and not any(a.is_relative_to(p) for p in private)}
    paths = [(str(directory), "enter") for directory in sorted(above)]
    paths += [(sys.executable, "read"), (str(Path(sys.executable).resolve()), "read"),
             (str(Path(serving.__file__).resolve().parent), "read"),
             *((p, "read") for p in sys.path if p and Path(p).is_dir())]
    for directory in model_dirs:
        paths.append((str(directory), "read"))
        paths.extend((str(f), "read") for f in sorted(Path(directory).rglob("*")) if f.is_file())
    for tenant in config.tenants:
        for adapter in tenant.adapters:
            if not adapter.source.startswith(OBJECT_STORE_SCHEMES):
                paths.append((adapter.source, "read"))
    if config.energy.powercap_root is not None:
        paths.append((str(config.energy.powercap_root), "read"))
    return paths


def check_reach(user: DomainUser, paths: list[tuple[str, str]]) -> None:
    """Raises DomainUserError naming what ``user`` cannot reach of ``paths``, as that user sees it."""
    existing = [(p, mode) for p, mode in paths if os.path.exists(p)]
    done = subprocess.run([sys.executable, "-S", "-c", _REACH_CHECK, json.dumps(existing)], user=user.uid,
                          group=user.gid, extra_groups=[], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
                          cwd="/")
    if done.returncode != 0:
        raise DomainUserError(f"the user {user.name} cannot run {sys.executable} ({done.stderr.strip()[-300:]}): "
                              "install fabriek's venv where other users can read it (not under /root)")
    failures = json.loads(done.stdout)
    if failures:
        shown = ", ".join(p for p, _ in failures[:3]) + (f" and {len(failures) - 3} more" if len(failures) > 3 else "")
        raise DomainUserError(
            f"the user {user.name} cannot reach {shown}: with local.run_as, the venv, FABRIEK_HOME "
            "(its models) and adapters must lie where other users can reach them, e.g. "
            "FABRIEK_HOME=/var/lib/fabriek (not under /root, whose mode is 0700)")


def refuse_object_store_adapters(config: PlatformConfig) -> None:
    """Object-store adapters are copied below $FABRIEK_HOME/adapters, which all domains would
    share: not with separate users (yet)."""
    for tenant in config.tenants:
        for adapter in tenant.adapters:
            if adapter.source.startswith(OBJECT_STORE_SCHEMES):
                raise DomainUserError(
                    f"tenant {tenant.id}'s adapter {adapter.id} comes from {adapter.source}; with local.run_as "
                    "only local adapter directories are supported: copy it to a local directory")
