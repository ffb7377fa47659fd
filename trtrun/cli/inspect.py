"""`trtrun inspect`: what a plan holds: ops and the precision each runs in, profile, weight bytes."""

from __future__ import annotations

import json

import click

from .options import EXISTING_FILE, json_option


@click.command("inspect")
@click.argument("plan_path", metavar="PLAN", type=EXISTING_FILE)
@json_option
def command(plan_path, as_json):
    """Show PLAN's ops with their precision, inputs and outputs, shape profile and weight bytes.

    The file is fully validated first (magic, version, checksum, schema), so this is also the way to
    check a plan file.
    """
    from ..plan import load_plan

    plan = load_plan(plan_path)
    if as_json:
        click.echo(json.dumps(plan.to_dict(), indent=2, default=str))
    else:
        click.echo(plan.summary())
