"""``gotocr serve --ray [ADDRESS]``: the HTTP service over N engine replicas in a Ray cluster.

Two deployments make one Serve application:

* ``OcrEngine`` — :class:`~.replica.EngineReplica`, one ``OcrEngine`` per replica with
  ``--replica-cpus`` CPUs reserved (its threads default to that number). Ray Serve routes each
  request to a replica with fewer than ``--slots`` requests in flight (``max_ongoing_requests``),
  so a replica never queues what another could start. ``--replicas N`` fixes the count;
  ``--min-replicas``/``--max-replicas`` let Serve's autoscaler choose, aiming at
  ``--target-ongoing`` requests per replica.
* ``OcrHttp`` — the ingress: the very app ``gotocr serve`` runs (``server.app.create_app``,
  every route, limit and error), whose engine is a :class:`~.remote.RemoteEngine` over a handle
  to ``OcrEngine``. It reserves no CPU; its engine holds at most ``slots × max replicas``
  running requests plus ``--queue`` waiting ones (more are refused with 429).

Every other option is ``gotocr serve``'s (``--model``, ``--host``, ``--port``, ``--slots``, ...);
the model path must exist on every node that runs a replica (a shared filesystem, or the same
path synced to each node).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .cluster import connect, require_ray, split_ray_option

__all__ = ["RayServeOptions", "build_app", "deploy", "main", "APP_NAME", "ENGINE_DEPLOYMENT", "HTTP_DEPLOYMENT"]

APP_NAME = "gotocr"
ENGINE_DEPLOYMENT = "OcrEngine"
HTTP_DEPLOYMENT = "OcrHttp"


@dataclass(frozen=True)
class RayServeOptions:
    address: str | None = None
    """Cluster address (``ray start``'s ``host:port``, ``auto``); None: start a local cluster."""
    replicas: int | None = None
    """A fixed number of engine replicas; None with ``max_replicas``: autoscaling."""
    min_replicas: int = 1
    max_replicas: int | None = None
    target_ongoing: float | None = None
    """Autoscaling target of requests in flight per replica (default: ``slots``)."""
    replica_cpus: float = 1.0

    def __post_init__(self) -> None:
        if self.replicas is not None and self.replicas < 1:
            raise ValueError(f"--replicas must be >= 1, got {self.replicas}")
        if self.replicas is not None and self.max_replicas is not None:
            raise ValueError("give either --replicas or --min-replicas/--max-replicas, not both")
        if self.min_replicas < 0:
            raise ValueError(f"--min-replicas must be >= 0, got {self.min_replicas}")
        if self.max_replicas is not None and self.max_replicas < max(1, self.min_replicas):
            raise ValueError("--max-replicas must be >= 1 and >= --min-replicas")
        if self.replica_cpus <= 0:
            raise ValueError(f"--replica-cpus must be > 0, got {self.replica_cpus}")
        if self.target_ongoing is not None and self.target_ongoing <= 0:
            raise ValueError(f"--target-ongoing must be > 0, got {self.target_ongoing}")

    @property
    def most_replicas(self) -> int:
        if self.replicas is not None:
            return self.replicas
        return self.max_replicas if self.max_replicas is not None else 1


def _engine_settings(settings: Any, options: RayServeOptions) -> Any:
    """The replicas' settings: threads default to the CPUs each replica reserves."""
    import msgspec

    if settings.threads is not None:
        return settings
    return msgspec.structs.replace(settings, threads=max(1, int(options.replica_cpus)))


def build_app(settings: Any, options: RayServeOptions) -> Any:
    """The Serve application (``serve.run`` it): the HTTP ingress bound to the engine replicas."""
    import msgspec
    from ray import serve

    from .http import HttpIngress
    from .replica import EngineReplica

    scaling: dict[str, Any]
    if options.replicas is not None or options.max_replicas is None:
        scaling = {"num_replicas": options.replicas or 1}
    else:
        scaling = {"autoscaling_config": {
            "min_replicas": options.min_replicas,
            "initial_replicas": max(1, options.min_replicas),
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": options.target_ongoing or settings.slots,
        }}
    engine = serve.deployment(EngineReplica).options(
        name=ENGINE_DEPLOYMENT,
        ray_actor_options={"num_cpus": options.replica_cpus},
        max_ongoing_requests=settings.slots,
        # a page may take minutes on a busy CPU: no request timeout at this level
        graceful_shutdown_timeout_s=settings.shutdown_timeout,
        **scaling,
    ).bind(_engine_settings(settings, options))
    # The ingress admits what all replicas together can run; Serve queues the rest per replica.
    ingress_settings = msgspec.structs.replace(settings, slots=settings.slots * options.most_replicas)
    http = serve.deployment(HttpIngress).options(
        name=HTTP_DEPLOYMENT,
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=ingress_settings.slots + settings.queue + 64,
        graceful_shutdown_timeout_s=settings.shutdown_timeout,
    ).bind(ingress_settings, engine)
    return http


def deploy(settings: Any, options: RayServeOptions, *, name: str = APP_NAME) -> Any:
    """Start Serve's HTTP proxy on ``settings.host:port`` and run the application (returns when
    every replica is up). The caller must already be connected to the cluster."""
    from ray import serve

    serve.start(http_options={"host": settings.host, "port": settings.port})
    return serve.run(build_app(settings, options), name=name, route_prefix="/")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gotocr serve --ray",
        description="Serve GOT-OCR2 over HTTP from engine replicas in a Ray cluster. Every other "
                    "option is gotocr serve's (see gotocr serve --help).",
        add_help=False,
    )
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="Ray cluster address (host:port or auto); none: start a local cluster")
    p.add_argument("--replicas", type=int, default=None, help="fixed number of engine replicas (default 1)")
    p.add_argument("--min-replicas", type=int, default=1, help="autoscaling lower bound (with --max-replicas)")
    p.add_argument("--max-replicas", type=int, default=None, help="autoscaling upper bound: enables autoscaling")
    p.add_argument("--target-ongoing", type=float, default=None,
                   help="autoscaling target of requests in flight per replica (default --slots)")
    p.add_argument("--replica-cpus", type=float, default=1.0,
                   help="CPUs each engine replica reserves; its threads default to this (default 1)")
    p.add_argument("--ray-help", action="help", help="show these options and exit")
    return p


def parse(argv: Sequence[str]) -> tuple[Any, RayServeOptions]:
    """``gotocr serve`` settings and the Ray options from one command line."""
    from gotocr_fast.server.settings import SettingsError, settings_from_args

    _, address, rest = split_ray_option(list(argv))
    ns, rest = build_parser().parse_known_args(rest)
    try:
        options = RayServeOptions(address=address, replicas=ns.replicas, min_replicas=ns.min_replicas,
                                  max_replicas=ns.max_replicas, target_ongoing=ns.target_ongoing,
                                  replica_cpus=ns.replica_cpus)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return settings_from_args(rest), options


def main(argv: Sequence[str]) -> int:
    from gotocr_fast.server.cli import startup_checks_pass
    from gotocr_fast.server.settings import SettingsError

    require_ray()
    try:
        settings, options = parse(argv)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not startup_checks_pass(settings):
        return 2

    import ray
    from ray import serve

    owned = connect(options.address)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        deploy(settings, options)
        print(f"gotocr: serving on http://{settings.host}:{settings.port} through Ray "
              f"({options.most_replicas} engine replica(s) at most)", file=sys.stderr, flush=True)
        stop.wait()
    finally:
        try:
            serve.delete(APP_NAME)
            if owned and options.address is None:
                serve.shutdown()  # the cluster is ours: stop Serve's controller and proxy too
        finally:
            if owned:
                ray.shutdown()
    return 0
