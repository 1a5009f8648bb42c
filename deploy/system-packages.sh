#!/usr/bin/env bash
# The Debian packages behind every program the project runs outside its Python environments:
# each one named in deploy/programs.txt, the inventory (tests/deploy/test_programs.py keeps it in
# step with the code). As root on Debian (or Ubuntu) the missing ones are installed; elsewhere they
# are named, and with CI=true that is an error.
#
#   bash deploy/system-packages.sh [--arm64] [--trivy] [--list | --missing]
#
# --arm64 registers qemu's aarch64 handler with binfmt_misc (arm64 builds and the arm64 image test
# run under emulation). --list prints the packages and changes nothing; --missing prints those
# this machine lacks (what a run would install) and changes nothing.
# --trivy also installs Trivy, the image scanner of `nox -s images` (the GitHub workflows' image
# jobs ask for it): one pinned release, its tarball checked against the pinned sha256 before any
# of it is unpacked, as /usr/local/bin/trivy. Without it `images` records that the images' OS
# packages were not scanned.
set -euo pipefail
# Trivy's pinned release and the sha256 of its Linux tarballs, as published in that release's
# trivy_<version>_checksums.txt. To move the pin, change all three together.
TRIVY_VERSION=0.70.0
TRIVY_SHA256_64bit=8b4376d5d6befe5c24d503f10ff136d9e0c49f9127a4279fd110b727929a5aa9
TRIVY_SHA256_ARM64=2f6bb988b553a1bbac6bdd1ce890f5e412439564e17522b88a4541b4f364fc8d
arm64=false
trivy=false
list=false
dry=false
for arg in "$@"; do
    case $arg in
        --arm64) arm64=true ;;
        --trivy) trivy=true ;;
        --list) list=true ;;
        --missing) dry=true ;;
        *) echo "usage: $0 [--arm64] [--trivy] [--list | --missing]" >&2; exit 2 ;;
    esac
done
# The inventory's second column, where it names a Debian package (not an @source).
inventory="$(dirname "${BASH_SOURCE[0]}")/programs.txt"
mapfile -t packages < <(awk '{ sub(/#.*/, "") } NF >= 2 && $2 !~ /^@/ { print $2 }' "$inventory" \
    | sort -u)
if [[ $list == true ]]; then
    printf '%s\n' "${packages[@]}"
    exit 0
fi
# A package is installed only for a program (or library) of its that the machine lacks: what
# is there already stays, from wherever it came (a GitHub runner's own Docker, say, which
# Debian's docker.io would replace).
present() {
    if [[ $1 == *.so* ]]; then
        compgen -G "/lib/*/$1" >/dev/null || compgen -G "/usr/lib/*/$1" >/dev/null
    else
        command -v "$1" >/dev/null || [[ -x /usr/sbin/$1 || -x /sbin/$1 ]]
    fi
}
missing=()
while read -r program package; do
    if ! present "$program" && [[ " ${missing[*]} " != *" $package "* ]]; then
        missing+=("$package")
    fi
done < <(awk '{ sub(/#.*/, "") } NF >= 2 && $2 !~ /^@/ { print $1, $2 }' "$inventory")
if [[ $dry == true ]]; then
    [[ ${#missing[@]} -eq 0 ]] || printf '%s\n' "${missing[@]}"
    exit 0
fi
# Debian starts a package's service as it installs it: Prometheus on 127.0.0.1:9090, the
# Pushgateway on :9091, the registry on :5000, nginx on :80, dockerd (which the engine would then
# take for the user's own Docker), sshd on :22... The project starts instances of its own and
# needs none of them; on a systemd machine they took its ports. So packages are installed held
# (policy-rc.d refuses every start while apt runs: in a privileged container a service would act
# on the host's kernel), and the services of OUR_OWN that this run installed are disabled, so no
# boot starts them either. Services that were there before are left as they were; the other new
# ones start at the next boot, as Debian means them to.
OUR_OWN=(prometheus.service prometheus-pushgateway.service prometheus-node-exporter.service
         docker-registry.service nginx.service ssh.service docker.service docker.socket
         containerd.service)
unit_files() {
    local unit
    for unit in "${OUR_OWN[@]}"; do
        [[ ! -e /lib/systemd/system/$unit ]] || echo "$unit"
    done
}
install_held() {
    local policy=/usr/sbin/policy-rc.d before unit units=()
    before=" $(unit_files | tr '\n' ' ')"
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# deploy/system-packages.sh is installing: no service starts.\nexit 101\n' \
            > "$policy"
        chmod 755 "$policy"
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    for unit in $(unit_files); do
        [[ $before == *" $unit "* ]] || units+=("$unit")
    done
    if [[ ${#units[@]} -gt 0 ]]; then
        echo "not started, now or at boot (the project runs its own): ${units[*]}"
        systemctl disable --quiet "${units[@]}"
        [[ ! -d /run/systemd/system ]] || systemctl stop "${units[@]}"
    fi
}
# arm64 builds and the arm64 image test need qemu's aarch64 handler registered with binfmt_misc
# (inside a container, binfmt_misc has to be mounted first); asked for explicitly with --arm64.
enable_arm64_emulation() {
    [[ -e /proc/sys/fs/binfmt_misc/register ]] \
        || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    [[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || update-binfmts --enable qemu-aarch64
}
# The pinned Trivy as /usr/local/bin/trivy, unless that version is installed already. A download
# whose sha256 differs from the pin is refused before it is unpacked.
install_trivy() (
    if [[ $(trivy --version 2>/dev/null | head -n 1) == "Version: $TRIVY_VERSION" ]]; then
        return 0
    fi
    case $(uname -m) in
        x86_64 | amd64) arch=64bit sha256=$TRIVY_SHA256_64bit ;;
        aarch64 | arm64) arch=ARM64 sha256=$TRIVY_SHA256_ARM64 ;;
        *) echo "trivy: no pinned release for $(uname -m)" >&2; return 1 ;;
    esac
    if [[ $(id -u) -ne 0 ]]; then
        echo "trivy $TRIVY_VERSION is not installed (installing it needs root)" >&2
        [[ ${CI:-} != true ]]
        return
    fi
    asset="trivy_${TRIVY_VERSION}_Linux-${arch}.tar.gz"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "installing trivy $TRIVY_VERSION ($asset, sha256 $sha256)"
    curl --fail --silent --show-error --location --proto '=https' --retry 3 \
        --output "$work/$asset" \
        "https://github.com/aquasecurity/trivy/releases/download/v$TRIVY_VERSION/$asset"
    if ! echo "$sha256  $work/$asset" | sha256sum --check --strict --status -; then
        echo "trivy: $asset does not match its pinned sha256 $sha256: not installed" >&2
        return 1
    fi
    tar -xzf "$work/$asset" -C "$work" trivy
    install -m 0755 "$work/trivy" /usr/local/bin/trivy
    /usr/local/bin/trivy --version
)
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        echo "missing system packages: ${missing[*]} (needed for the container tests and images)" >&2
        [[ ${CI:-} != true ]]
        exit
    fi
    echo "installing Debian packages: ${missing[*]}"
    install_held "${missing[@]}"
fi
if [[ $arm64 == true ]]; then
    enable_arm64_emulation
fi
if [[ $trivy == true ]]; then
    install_trivy
fi
