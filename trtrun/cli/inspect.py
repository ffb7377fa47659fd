"""`trtrun inspect`: what a plan holds: ops and the precision each runs in, profile, weight bytes, and whether the
GPU runtime takes it."""

from __future__ import annotations

import json

import click

from .options import EXISTING_FILE, json_option


def gpu_support(plan) -> dict:
    """Whether the GPU runtime's kernels take the plan, from its header alone (no GPU or extension needed): the
    refusal trtrun.runtime.lower.check_gpu_support gives, and the host tail's ops (rank-2 outputs run on the host
    after the device's part: trtrun.runtime.tail)."""
    from ..errors import PlanError
    from ..runtime.lower import check_gpu_support
    from ..runtime.tail import on_host

    host = [op["name"] for op in plan.ops if on_host(plan, op)]
    try:
        check_gpu_support(plan)
    except PlanError as e:
        return {"runs": False, "why": str(e), "host_ops": host}
    return {"runs": True, "why": None, "host_ops": host}


def gpu_text(g: dict) -> str:
    if not g["runs"]:
        return f"  GPU runtime: refused: {g['why']}"
    if g["host_ops"]:
        n = len(g["host_ops"])
        return (f"  GPU runtime: takes it; the last {n} op{'s' if n > 1 else ''} ({', '.join(g['host_ops'])}) run on "
                f"the host after the device's part (the host tail)")
    return "  GPU runtime: takes every op"


@click.command("inspect")
@click.argument("plan_path", metavar="PLAN", type=EXISTING_FILE)
@json_option
def command(plan_path, as_json):
    """Show PLAN's ops with their precision, inputs and outputs, shape profile and weight bytes, and whether
    the GPU runtime's kernels take it (from the file alone: no GPU needed).

    The file is fully validated first (magic, version, checksum, schema), so this is also the way to
    check a plan file.
    """
    from ..plan import load_plan

    plan = load_plan(plan_path)
    g = gpu_support(plan)
    if as_json:
        click.echo(json.dumps({**plan.to_dict(), "gpu_runtime": g}, indent=2, default=str))
    else:
        click.echo(plan.summary() + "\n" + gpu_text(g))
