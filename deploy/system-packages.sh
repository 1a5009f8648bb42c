#!/usr/bin/env bash
# The Debian packages behind the pipeline's real parts: a container engine speaking the Docker API
# (Podman with runc), a local registry, debootstrap for the locally made base image, promtool
# (Prometheus) to check metrics and rules, and wrk to load the API in benchmarks.
# As root on Debian they are installed when missing; elsewhere the missing ones are named, and
# with CI=true that is an error.
set -euo pipefail
packages=(podman runc debootstrap docker-registry prometheus wrk)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    exit 0
fi
echo "missing system packages: ${missing[*]} (needed for the container tests and images)" >&2
[[ ${CI:-} != true ]]
