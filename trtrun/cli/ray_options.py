"""The `--ray` options of `trtrun serve` (Ray Serve replicas instead of this machine's processes), as one click
decorator; trtrun.serve.ray_serve.serve_on_ray takes them. Imports nothing but click."""

from __future__ import annotations

import click

from .options import compose

ray_serve_options = compose(
    click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
                 help="serve from Ray Serve replicas (pip install 'trtrun[ray]'), one per GPU; ADDRESS as ray.init "
                      "takes it (auto, HOST:PORT, ray://HOST:PORT), else RAY_ADDRESS or a local Ray; --host/--port "
                      "are Ray Serve's HTTP proxy's (docs/ray.md)"),
    click.option("--ray-replicas", type=click.IntRange(min=1), default=None,
                 help="with --ray: replicas (default: the cluster's GPUs, or 1 CPU replica on the reference backend)"),
    click.option("--ray-max-replicas", type=click.IntRange(min=1), default=None,
                 help="with --ray: autoscale between --ray-replicas and this many"),
    click.option("--ray-cpus-per-replica", type=click.FloatRange(min=0, min_open=True), default=1.0,
                 show_default=True, help="with --ray: CPUs each replica asks for"),
    click.option("--ray-replicas-per-gpu", type=click.IntRange(min=1), default=1, show_default=True,
                 help="with --ray: replicas sharing each GPU (num_gpus=1/N each, an engine each): Ray Serve's own "
                      "work per request is a replica process's, so more processes take more requests (docs/ray.md)"),
    click.option("--ray-max-ongoing", type=click.IntRange(min=1), default=256, show_default=True,
                 help="with --ray: requests a replica holds at once (its micro-batches form from them)"),
    click.option("--ray-haproxy", is_flag=True,
                 help="with --ray (no ADDRESS): a local Ray whose Ray Serve takes requests through HAProxy instead of "
                      "its Python proxy (Ray's experimental RAY_SERVE_ENABLE_HA_PROXY; ~10x the requests/s measured), "
                      "with files and ports of this server's own, and the HAProxy Ray leaves running ended on exit "
                      "(docs/ray.md)"),
)
