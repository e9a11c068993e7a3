"""Tenant options of submit/run/worker/autoscale, and `m3pipe tenants` (usage and limits)."""

from __future__ import annotations

import argparse
import json
import sys

from pydantic import ValidationError

from pipeline.broker.routing import routed_queues
from pipeline.cli.options import checked_queue, comma_list, job_store, usage_error
from pipeline.exit_codes import EXIT_OK
from pipeline.settings import Settings
from schemas.tenant import DEFAULT_TENANT, Priority, TenantLimits, checked_tenant, tenant_queue


def add_job_tenant_options(parser: argparse.ArgumentParser) -> None:
    """--tenant and --priority of a job (submit, run)."""
    parser.add_argument(
        "--tenant",
        help=f"the team the job belongs to: its own queue and quotas (default: $M3PIPE_TENANT, "
        f"else {DEFAULT_TENANT!r}, which uses the base queue)",
    )
    parser.add_argument(
        "--priority",
        choices=[p.value for p in Priority],
        default=Priority.NORMAL.value,
        help="high-priority shards are taken before waiting normal ones, normal before low "
        "(a running shard is never preempted)",
    )


def add_consumer_tenant_option(parser: argparse.ArgumentParser) -> None:
    """--tenants of the commands that consume or watch queues (worker, autoscale, backlog)."""
    parser.add_argument(
        "--tenants",
        help="comma-separated tenants whose queues to take (under the base queue "
        "$M3PIPE_QUEUE); with --queues, both sets",
    )
    parser.add_argument(
        "--route-by-model",
        action="store_true",
        help="take only the base and tenant queues' routes of this pool's models (as submit "
        "--route-by-model sends them; default: $M3PIPE_ROUTE_BY_MODEL)",
    )


def consumer_queues(
    queues_flag: str | None,
    tenants_flag: str | None,
    settings: Settings,
    route_by_model: bool = False,
) -> list[str]:
    """The queues a worker, autoscaler or backlog reads: --queues as named, the --tenants'
    queues, or the base queue. Routed by model (--route-by-model, $M3PIPE_ROUTE_BY_MODEL),
    the tenants' and base queues become their routes of the embed and rerank models; queues
    named with --queues are always taken as named (the autoscaler hands its workers routed
    ones). ValueError on a bad name."""

    tenants = [checked_tenant(t) for t in comma_list(tenants_flag or "")]
    if tenants_flag is not None and not tenants:
        raise ValueError("--tenants needs at least one tenant name")
    named = [checked_queue(q) for q in comma_list(queues_flag or "")]
    pooled = [tenant_queue(settings.queue, tenant) for tenant in tenants]
    if not named and not tenants:
        pooled = comma_list(settings.queue)
    pooled = [checked_queue(q) for q in pooled]
    if route_by_model or settings.route_by_model:
        pooled = routed_queues(pooled, [settings.model, settings.rerank_model])
    return list(dict.fromkeys(named + pooled))


def job_tenant(args: argparse.Namespace, settings: Settings) -> tuple[str, Priority]:
    """The job's tenant and priority from the flags (ValueError on a bad tenant name)."""
    return checked_tenant(args.tenant or settings.tenant), Priority(args.priority)


def add_tenants_command(sub: argparse._SubParsersAction) -> None:
    tenants = sub.add_parser("tenants", help="tenants: usage and limits (set NAME to change)")
    tenants.add_argument("--json", action="store_true", help="machine-readable output")
    actions = tenants.add_subparsers(dest="action")
    put = actions.add_parser("set", help="replace a tenant's limits (a limit left out: none)")
    put.add_argument("name")
    put.add_argument("--max-jobs", type=int, help="jobs queued or running at once")
    put.add_argument("--max-queued", type=int, help="shards waiting in Redis, all its jobs")
    put.add_argument("--max-in-flight", type=int, help="shards waiting or running")
    tenants.set_defaults(func=cmd_tenants)


def cmd_tenants(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.broker.backlog import backlogs
    from pipeline.jobs.tenant_records import (
        set_tenant_limits,
        tenant_limits,
        tenant_names,
        tenant_usage,
    )

    if args.action == "set":
        try:
            name = checked_tenant(args.name)
            limits = TenantLimits(
                max_jobs=args.max_jobs,
                max_queued=args.max_queued,
                max_in_flight=args.max_in_flight,
            )
        except (ValueError, ValidationError) as exc:
            return usage_error(exc)  # before Redis is even reached
        set_tenant_limits(job_store(settings), name, limits)
        print(f"m3pipe tenants: {name}: {describe_limits(limits)}", file=sys.stderr)
        return EXIT_OK
    store = job_store(settings)
    names = tenant_names(store)
    queues = {name: tenant_queue(settings.queue, name) for name in names}
    waiting = backlogs(store.redis, queues.values())
    rows = []
    for name in names:
        usage, limits = tenant_usage(store, name), tenant_limits(store, name)
        rows.append(
            {
                **usage.model_dump(),
                "queue": queues[name],
                "queue_backlog": waiting[queues[name]].total,
                "limits": limits.model_dump(),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no tenants", file=sys.stderr)
    for row in rows:
        print(
            f"{row['tenant']:<16} jobs {row['jobs']:>3}  shards queued {row['queued']:>5} "
            f"running {row['running']:>3}  queue {row['queue']} ({row['queue_backlog']} in "
            f"it)  limits: {describe_limits(TenantLimits(**row['limits']))}"
        )
    return EXIT_OK


def describe_limits(limits: TenantLimits) -> str:
    given = {k: v for k, v in limits.model_dump().items() if v is not None}
    return ", ".join(f"{k} {v}" for k, v in given.items()) or "none"
