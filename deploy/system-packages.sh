#!/usr/bin/env bash
# The Debian packages behind the pipeline's real parts: a container engine speaking the Docker API
# (Podman with runc), a local registry, debootstrap for the locally made base image, promtool
# (Prometheus) to check metrics and rules, wrk to load the API in benchmarks, and qemu-user-static
# with binfmt-support to build and run arm64 images under emulation (`--arm64` registers it);
# openssh-server, nginx and curl for the sandbox fleet's simulated hosts (util-linux gives flock);
# prometheus-pushgateway for the monitoring stack's deploy markers (its tests run a real one).
# As root on Debian they are installed when missing; elsewhere the missing ones are named, and
# with CI=true that is an error.
set -euo pipefail
packages=(podman runc debootstrap docker-registry prometheus wrk qemu-user-static binfmt-support
          openssh-server nginx-light curl util-linux prometheus-pushgateway)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
# arm64 builds and the arm64 image test need qemu's aarch64 handler registered with binfmt_misc
# (inside a container, binfmt_misc has to be mounted first); asked for explicitly with --arm64.
enable_arm64_emulation() {
    [[ -e /proc/sys/fs/binfmt_misc/register ]] \
        || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    [[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || update-binfmts --enable qemu-aarch64
}
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        echo "missing system packages: ${missing[*]} (needed for the container tests and images)" >&2
        [[ ${CI:-} != true ]]
        exit
    fi
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [[ ${1:-} == --arm64 ]]; then
    enable_arm64_emulation
fi
