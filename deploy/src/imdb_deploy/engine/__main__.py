"""`python -m imdb_deploy.engine up|down|status`: the local container engine for builds, tests.

`unmount DIR` releases container storage still mounted below DIR (conmon's clean-up can mount
a stopped engine's store again), so that DIR can be deleted: nox runs it on each session's pytest
directory before pytest empties it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from imdb_deploy.engine import local, podman, registry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imdb_deploy.engine", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "status", "unmount"])
    parser.add_argument("directory", nargs="?", type=Path, help="for unmount: the directory")
    parser.add_argument(
        "--registry",
        default=os.environ.get(local.REGISTRY_VAR, registry.DEFAULT_REGISTRY_ADDRESS),
        help="host:port of the local registry on loopback (env MLOPS_REGISTRY)",
    )
    parser.add_argument(
        "--base-source",
        choices=["pull", "debootstrap"],
        default=os.environ.get(local.BASE_SOURCE_VAR),
        help="how to get the base image when missing (env MLOPS_BASE_IMAGE_SOURCE; default: "
        "pull on a Docker engine, debootstrap on the Podman engine started here)",
    )
    parser.add_argument(
        "--podman",
        action="store_true",
        help="start Podman even when a Docker engine answers",
    )
    parser.add_argument(
        "--storage",
        type=Path,
        default=os.environ.get(local.STORAGE_DIR_VAR),
        help="own image storage for a started Podman (env MLOPS_ENGINE_STORAGE; "
        "default: the machine's)",
    )
    args = parser.parse_args(argv)
    if args.action == "unmount":
        if args.directory is None:
            parser.error("unmount needs a directory")
        left = podman.mount_points_below(args.directory)
        podman.unmount_below(args.directory)
        print(f"unmounted {len(left)} mount point(s) below {args.directory}")
        return 0
    directory = local.state_dir()
    if args.action == "up":
        info = local.up(directory, args.registry, args.base_source, not args.podman, args.storage)
        print(f"engine   {info.kind} at {info.docker_host}")
        print(f"registry http://{info.registry}")
        print(f"base     {info.base_image} ({info.base_image_id[:19]})")
        print(f"export DOCKER_HOST={info.docker_host}")
        return 0
    if args.action == "down":
        stopped = local.down(directory, args.storage)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    report = local.status(directory)
    print(json.dumps(report, indent=2))
    return 0 if report["up"] else 1


if __name__ == "__main__":
    sys.exit(main())
