"""The ``fabriek`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _serve(args: argparse.Namespace) -> int:
    from serving.config import load_config, with_overrides
    from serving.launcher import serve_locally

    config = with_overrides(load_config(args.config), http_port=args.http_port, grpc_port=args.grpc_port,
                            dashboard_port=args.dashboard_port)
    return serve_locally(config)


def _version(args: argparse.Namespace) -> int:
    from serving.local.startup_code import code_pth_files, describe_versions

    print(describe_versions())
    for pth in code_pth_files():
        print(f"{'' if pth.expected else 'UNEXPECTED: '}{pth.describe()}")
    return 0


def _models_prepare(args: argparse.Namespace) -> int:
    from serving.engine.default_model import builtin_models, prepare_builtin_model

    for name in args.names or sorted(builtin_models()):
        prepare_builtin_model(name, force=args.force)
    return 0


def _redacted(url: str) -> str:
    """A database URL without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _config_check(args: argparse.Namespace) -> int:
    from serving.config import load_config
    from serving.config.cluster_layout import local_clusters
    from serving.config.domains import route_prefix

    config = load_config(args.config)
    print(f"{args.config or 'default config'}: valid "
          f"({len(config.models)} model(s), {len(config.pools)} pool(s))")
    print("isolation domains (each its own Ray cluster: head, Serve controller, dashboard, token, "
          "front door, admission controller, ledger, keys and salt):")
    clusters = {c.domain: c for c in local_clusters(config)}
    for domain in config.domains():
        cluster = clusters[domain.name]
        print(f"  {domain.name}: classes {', '.join(sorted(domain.classes))}; pools {', '.join(domain.pools)}")
        print(f"    cluster: Ray head {cluster.gcs_address()}, dashboard :{cluster.dashboard_port}, "
              f"metrics :{cluster.metrics_export_port} (locally; on Kubernetes the RayService "
              f"<release>-{domain.name})" + (f"; runs as the Unix user {cluster.user}" if cluster.user else ""))
        print(f"    front door: HTTP :{cluster.http_port}{route_prefix(domain.name)}/v1, gRPC :{cluster.grpc_port}")
        print(f"    secrets: Ray token {cluster.token_file}; API keys {config.auth.resolved_key_file(domain.name)}; "
              f"cache salt {config.auth.resolved_cache_salt_secret_file(domain.name)}; "
              f"ledger {_redacted(config.ledger.resolved_url(domain.name))}")
        if domain.is_mixing_government_and_commercial:
            print(f"fabriek: warning: domain {domain.name!r} holds both government and commercial "
                  "tenants: their requests share pools and front-door processes; give each class "
                  "pools of its own to separate them", file=sys.stderr)
    for pool in config.unreachable_pools():
        print(f"fabriek: warning: pool {pool!r} is used by no class, so no front door reaches it "
              "and it is not deployed; add it to a class's `pools`", file=sys.stderr)
    if not config.domains():
        print("fabriek: warning: no class uses any pool: there is nothing to serve", file=sys.stderr)
    if config.serve.proxy == "ray" and len(config.domains()) > 1:
        print("fabriek: warning: serve.proxy `ray` puts every domain's requests through Ray's one "
              "Python proxy per node; use `haproxy` (the default) to keep the domains' traffic apart "
              "up to their own front doors", file=sys.stderr)
    return 0


def _config_ray_env(args: argparse.Namespace) -> int:
    from serving.config import load_config

    for name, value in load_config(args.config).ray_env().items():
        print(f"export {name}={value}")
    return 0


def _bookkeeping_config(args: argparse.Namespace):
    """The config as ``keys`` and ``usage`` need it: tenants, domains and file paths.

    They skip the checks of engine arguments and deployment options against vLLM and Ray,
    which import both (about 8 s on a 2-core machine); `config check` and `serve` run them.
    """
    from serving.config import load_config

    return load_config(args.config, check_library_settings=False)


def _key_files(args: argparse.Namespace):
    """The config and each domain's key file, by domain name."""
    from routers import KeyFile

    config = _bookkeeping_config(args)
    return config, {d.name: KeyFile(config.auth.resolved_key_file(d.name)) for d in config.domains()}


def _keys_create(args: argparse.Namespace) -> int:
    config, files = _key_files(args)
    domain = config.domain_of(args.tenant).name
    # Only the tenant's own domain's file: its front door is the only one that knows the key.
    keys = files[domain]
    key, record = keys.create(args.tenant, {t.id for t in config.tenants})
    print(f"created key {record.key_id} for tenant {record.tenant_id} in {keys.path} ({domain} domain)")
    print("the key is shown only now; store it safely:")
    print(key)  # last line: scripts take it with `| tail -n 1`
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    _, files = _key_files(args)
    print(f"{'KEY ID':<14}{'TENANT':<24}{'DOMAIN':<14}{'CREATED (UTC)':<22}STATUS")
    count = 0
    for domain, keys in files.items():
        for r in keys.read().records:
            status = f"revoked {_utc(r.revoked_at)}" if r.is_revoked else "active"
            print(f"{r.key_id:<14}{r.tenant_id:<24}{domain:<14}{_utc(r.created_at):<22}{status}")
            count += 1
    if not count:
        print(f"(no keys in {', '.join(str(k.path) for k in files.values())})")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from routers import KeyFileError

    _, files = _key_files(args)
    holders = [keys for keys in files.values() if any(r.key_id == args.key_id for r in keys.read().records)]
    if not holders:
        raise KeyFileError(f"no key with id {args.key_id!r} in any domain's key file")
    record = holders[0].revoke(args.key_id)
    print(f"revoked key {record.key_id} of tenant {record.tenant_id}; "
          "a running server refuses it within about a second")
    return 0


def _usage(args: argparse.Namespace) -> int:
    from serving.records.ledger import CANCELLED, ERROR, OK, REJECTED, UsageLedger

    def energy_wh(row: dict) -> tuple[str, str]:
        """A row's energy in Wh (``-``: not measured), and ``*`` when it leaves out requests
        that ran where no energy counter exists. Rejected and unfinished requests ran on no
        engine: they have no energy of their own."""
        if row["energy_j"] is None or row["status"] not in (OK, ERROR, CANCELLED):
            return "-", ""
        return f"{row['energy_j'] / 3600:.3f}", "*" if row["metered_requests"] < row["requests"] else ""

    config = _bookkeeping_config(args)
    since = args.since
    rows = []
    for domain in config.domains():  # each domain keeps its own ledger
        ledger = UsageLedger(config.ledger.resolved_url(domain.name))
        rows += ledger.totals(tenant_id=args.tenant, since=since)
        ledger.close()
    known = {m.id for m in config.models} | {a.id for t in config.tenants for a in t.adapters}
    rows = _group_refused_unknown_models(rows, known, REJECTED)
    cells = []
    marks = set()
    for row in rows:
        energy, mark = energy_wh(row)
        marks.add(mark)
        cells.append([row["tenant_id"], row["model"] or "-", row["status"], str(row["requests"]),
                      str(row["prompt_tokens"] or 0), str(row["completion_tokens"] or 0), energy + mark])
    # The energy mark stands after its number, so that the numbers stay aligned.
    lines = text_table(["TENANT", "MODEL", "STATUS", "REQUESTS", "PROMPT TOK", "COMPL TOK", "ENERGY Wh"],
                       cells, right=set(range(3, 7)), trailing_marks="*")
    print("\n".join(lines))
    if not rows:
        print("(no usage recorded" + (f" since {_utc(since)} UTC" if since else "") + ")")
    if "*" in marks:
        print("* some requests of this row ran where no energy counter exists (not measured)")
    return 0


# A refused request's model as the usage table shows it when no model or adapter has its name:
# a client may send any name, and each one would otherwise be a row of its own.
UNKNOWN_MODELS = "(unknown models)"


def _group_refused_unknown_models(rows: list[dict], known: set[str], refused: str) -> list[dict]:
    """``rows`` with the refused requests for models nobody has summed into one row per tenant."""
    kept, grouped = [], {}
    for row in rows:
        if row["status"] != refused or row["model"] in known:
            kept.append(row)
            continue
        total = grouped.setdefault(row["tenant_id"], {**row, "model": UNKNOWN_MODELS, "requests": 0,
                                                      "prompt_tokens": 0, "completion_tokens": 0})
        for name in ("requests", "prompt_tokens", "completion_tokens"):
            total[name] += row[name] or 0
    return sorted(kept + list(grouped.values()), key=lambda r: (r["tenant_id"], r["model"] or "", r["status"]))


def text_table(header: list[str], rows: list[list[str]], right: set[int], trailing_marks: str = "") -> list[str]:
    """Lines of a table whose columns are as wide as their widest cell, two spaces apart;
    the columns numbered in ``right`` are right-aligned (numbers). A last cell may end in one of
    ``trailing_marks``, which stands after the column so that the numbers stay aligned."""
    def bare(cell: str, last: bool) -> str:
        return cell[:-1] if last and cell and cell[-1] in trailing_marks else cell

    widths = [max(len(bare(r[i], i == len(header) - 1)) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = []
        for i, (cell, width) in enumerate(zip(row, widths)):
            text = bare(cell, i == len(header) - 1)
            cells.append(text.rjust(width) if i in right else text.ljust(width))
        mark = row[-1][len(bare(row[-1], True)):]
        lines.append("  ".join(cells).rstrip() + mark)
    return lines


def describe_power_status(status: dict) -> str:
    """``fabriek power status`` as a table: caps, then pools."""
    import time

    lines = []
    if status["caps"]:
        cells = []
        for cap in status["caps"]:
            until = "-" if cap["until"] is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(cap["until"]))
            cells.append([cap["name"], f"{cap['watts']:.0f}", until, "yes" if cap["binding"] else "no",
                          "config" if cap["from_config"] else "cli", ",".join(cap["pools"])])
        lines += text_table(["CAP", "WATTS", "UNTIL", "BINDING", "FROM", "POOLS"], cells, right={1})
    else:
        lines.append("(no power cap in force)")
    lines.append("")
    cells = [[name, pool["tenant_class"], "-" if pool["watts"] is None else f"{pool['watts']:.1f}",
              "-" if pool["running"] is None else f"{pool['running']:.0f}", str(pool["limit"]),
              str(pool["max_running"]), str(pool["floor"])] for name, pool in status["pools"].items()]
    lines += text_table(["POOL", "CLASS", "WATTS", "RUNNING", "LIMIT", "MAX", "FLOOR"], cells, right=set(range(2, 7)))
    if status["unmetered"]:
        lines.append("")
        lines.append("not metered (a cap cannot be kept there): " + ", ".join(status["unmetered"]))
    return "\n".join(lines)


def _power_clusters(args: argparse.Namespace):
    """The config, and the Ray clusters of the domains a `fabriek power` command addresses."""
    from serving.config.cluster_layout import local_clusters

    config = _bookkeeping_config(args)
    clusters = local_clusters(config)
    if args.domain is not None:
        clusters = [c for c in clusters if c.domain == args.domain]
        if not clusters:
            raise SystemExit(f"fabriek power: no domain {args.domain!r}; the config has "
                             f"{', '.join(d.name for d in config.domains())}")
    return config, clusters


def _power_cap(args: argparse.Namespace) -> int:
    import datetime

    from routers.power_budget import parse_until, parse_watts
    from serving.config.domains import platform_share
    from serving.power.client import call_domain

    try:
        watts = parse_watts(args.watts)
        until = None if args.until is None else parse_until(args.until, datetime.datetime.now().astimezone())
        config, clusters = _power_clusters(args)
        if args.scope == "platform":
            # The operator's side of a facility-wide cap: each domain's governor gets a share,
            # split by what each draws now, and keeps it if this command is never run again.
            statuses = {c.domain: call_domain(c, "status") for c in clusters}
            drawn = {d: _drawn_watts(status) for d, status in statuses.items()}
            shares = platform_share(config, watts, drawn)
            targets = [(c, shares[c.domain], f"domain:{c.domain}") for c in clusters]
        else:
            owner = _scope_domain(config, args.scope)
            targets = [(c, watts, args.scope) for c in clusters if c.domain == owner]
        end = None if until is None else until.timestamp()
        for cluster, share, scope in targets:
            cap = call_domain(cluster, "set_cap", args.name, share, scope, end)
            ends = "until lifted" if until is None else f"until {until:%Y-%m-%d %H:%M %Z}"
            print(f"{cluster.domain} domain: power cap {cap['name']}: {share:.0f} W over "
                  f"{', '.join(cap['pools'])}, {ends}")
            print(describe_power_status(call_domain(cluster, "status")))
    except ValueError as err:  # a bad value, or a governor's refusal (an unknown scope)
        print(f"fabriek power cap: {err}", file=sys.stderr)
        return 2
    return 0


def _drawn_watts(status: dict) -> float | None:
    """What a domain drew over its governor's last interval; None if no pool was metered."""
    watts = [p["watts"] for p in status["pools"].values() if p["watts"] is not None]
    return sum(watts) if watts else None


def _scope_domain(config, scope: str) -> str:
    """The domain whose governor keeps a `domain:` or `pool:` cap."""
    kind, _, name = scope.partition(":")
    if kind == "domain" and name in {d.name for d in config.domains()}:
        return name
    if kind == "pool":
        for domain in config.domains():
            if name in domain.pools:
                return domain.name
    raise ValueError(f"unknown scope {scope!r}: use `platform`, `domain:NAME` or `pool:NAME` of a served pool")


def _power_lift(args: argparse.Namespace) -> int:
    from serving.power.client import call_domain

    _, clusters = _power_clusters(args)
    lifted = [c.domain for c in clusters if call_domain(c, "lift", args.name)]
    if not lifted:
        print(f"fabriek power lift: no power cap named {args.name!r}", file=sys.stderr)
        return 1
    print(f"power cap {args.name} lifted ({', '.join(lifted)} domain)")
    return 0


def _power_status(args: argparse.Namespace) -> int:
    from serving.power.client import call_domain

    _, clusters = _power_clusters(args)
    for cluster in clusters:
        print(f"== {cluster.domain} domain (Ray cluster {cluster.gcs_address()}) ==")
        print(describe_power_status(call_domain(cluster, "status")))
    return 0


def _parse_since(text: str) -> float:
    """``2026-11-28``, ``2026-11-28T09:00`` (UTC) or a duration back from now: ``90m``, ``24h``, ``7d``."""
    import datetime
    import time

    units = {"m": 60, "h": 3600, "d": 86400}
    if text[:-1].isdigit() and text[-1] in units:
        return time.time() - int(text[:-1]) * units[text[-1]]
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since {text!r}: use a date (2026-11-28), a UTC time (2026-11-28T09:00) "
            "or a duration (90m, 24h, 7d)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def _utc(timestamp: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fabriek`` command."""
    parser = argparse.ArgumentParser(prog="fabriek", description="fabriek, the AI facility's serving platform")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the platform on this machine")
    serve.add_argument("--config", type=Path, default=None,
                       help="platform config YAML (default: the shipped local CPU config)")
    serve.add_argument("--http-port", type=int, default=None, help="HTTP API port (default: from config, 8000)")
    serve.add_argument("--grpc-port", type=int, default=None, help="gRPC API port (default: from config, 9000)")
    serve.add_argument("--dashboard-port", type=int, default=None, help="Ray dashboard port (default: 8265)")
    serve.set_defaults(run=_serve)

    commands.add_parser("version", help="installed versions of fabriek, vLLM, Ray and torch, and the "
                                        "`.pth` files that run code at Python start").set_defaults(run=_version)

    models = commands.add_parser("models", help="manage model weights").add_subparsers(dest="action", required=True)
    prepare = models.add_parser("prepare", help="fetch and convert the built-in models (idempotent)")
    prepare.add_argument("names", nargs="*", metavar="NAME", help=(
        "built-in models to prepare (default: all): smollm2-135m-instruct (chat), multilingual-e5-small "
        "(embeddings)"))
    prepare.add_argument("--force", action="store_true", help="rebuild even if a verified copy exists")
    prepare.set_defaults(run=_models_prepare)

    config = commands.add_parser("config", help="platform config").add_subparsers(dest="action", required=True)
    check = config.add_parser("check", help="validate a platform config")
    check.add_argument("config", type=Path, nargs="?", default=None)
    check.set_defaults(run=_config_check)
    ray_env = config.add_parser("ray-env", help="print the environment a Ray cluster needs for this config "
                                                "(for `ray start` before `serve deploy`)")
    ray_env.add_argument("config", type=Path, nargs="?", default=None)
    ray_env.set_defaults(run=_config_ray_env)

    keys = commands.add_parser("keys", help="API keys of the config's tenants").add_subparsers(
        dest="action", required=True)
    config_option = argparse.ArgumentParser(add_help=False)
    config_option.add_argument("--config", type=Path, default=None,
                               help="platform config YAML whose key file and tenants to use "
                                    "(default: the shipped local CPU config)")
    create = keys.add_parser("create", parents=[config_option],
                             help="create a key for a tenant; prints it once, on the last line")
    create.add_argument("--tenant", required=True, help="tenant id from the platform config")
    create.set_defaults(run=_keys_create)
    keys.add_parser("list", parents=[config_option], help="list keys (ids, tenants, status; no secrets)"
                    ).set_defaults(run=_keys_list)
    revoke = keys.add_parser("revoke", parents=[config_option], help="revoke a key by its id")
    revoke.add_argument("key_id", help="the id `fabriek keys list` shows")
    revoke.set_defaults(run=_keys_revoke)

    usage = commands.add_parser("usage", parents=[config_option],
                                help="requests, tokens and energy (Wh) per tenant, model and status, "
                                     "from the ledger")
    usage.add_argument("--tenant", default=None, help="only this tenant")
    usage.add_argument("--since", default=None, type=_parse_since,
                       help="only requests since a date or UTC time (2026-11-28, 2026-11-28T09:00) "
                            "or for a past duration (90m, 24h, 7d)")
    usage.set_defaults(run=_usage)

    power = commands.add_parser("power", help="power caps of a running platform (a grid operator's curtailment)"
                                ).add_subparsers(dest="action", required=True)
    address = argparse.ArgumentParser(add_help=False, parents=[config_option])
    address.add_argument("--domain", default=None,
                         help="only this domain's cluster (default: every domain's; each is reached "
                              "with its own Ray token)")
    cap = power.add_parser("cap", parents=[address], help="keep the platform's measured power under a cap")
    cap.add_argument("watts", help="the cap, e.g. 800W, 2.5kW, 1.2MW")
    cap.add_argument("--scope", default="platform",
                     help="`platform` (default), `domain:NAME` or `pool:NAME`")
    cap.add_argument("--until", default=None,
                     help="when it ends: 19:00 (the next 19:00) or 2026-12-02T19:00 (local time); "
                          "default: until lifted")
    cap.add_argument("--name", default="grid", help="the cap's name (default `grid`; the same name replaces it)")
    cap.set_defaults(run=_power_cap)
    lift = power.add_parser("lift", parents=[address], help="lift a power cap")
    lift.add_argument("name", nargs="?", default="grid", help="its name (default `grid`)")
    lift.set_defaults(run=_power_lift)
    power.add_parser("status", parents=[address], help="caps in force, and each pool's power and running limit"
                     ).set_defaults(run=_power_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fabriek`` console script."""
    from routers import KeyFileError
    from serving.config import ConfigError
    from serving.engine.default_model import ModelPrepareError
    from serving.power.client import GovernorUnreachable

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, ModelPrepareError, KeyFileError, GovernorUnreachable) as err:
        print(f"fabriek: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
