"""Target platforms: Docker's names, pip's wheel tags and Debian's architecture names."""

from __future__ import annotations

import platform as host_platform
from dataclasses import dataclass

# Debian bookworm has glibc 2.36; wheels for any manylinux_2_X up to it run on the base image.
GLIBC_MINOR = 36
OLDEST_GLIBC_MINOR = 17


class PlatformError(ValueError):
    """An unsupported `--platform`."""


@dataclass(frozen=True)
class Platform:
    """One target platform, e.g. linux/amd64."""

    docker: str
    debian_arch: str
    machine: str

    @property
    def suffix(self) -> str:
        """Short name for file and tag suffixes: amd64, arm64."""
        return self.debian_arch

    def pip_platforms(self) -> list[str]:
        """`pip download --platform` values: pip does not widen manylinux_2_X, so list them all."""
        tags = [
            f"manylinux_2_{minor}_{self.machine}"
            for minor in range(GLIBC_MINOR, OLDEST_GLIBC_MINOR - 1, -1)
        ]
        return [*tags, f"manylinux2014_{self.machine}"]

    def is_native(self) -> bool:
        """True when this machine runs the platform without emulation."""
        return host_platform.machine() == self.machine


PLATFORMS = {
    "linux/amd64": Platform("linux/amd64", "amd64", "x86_64"),
    "linux/arm64": Platform("linux/arm64", "arm64", "aarch64"),
}


# qemu-user 7.2 (Debian 12) passes the host's /proc/cpuinfo through to an emulated aarch64
# process; onnxruntime's CPU detection finds no "CPU implementer" line in the x86 text and
# crashes. Bind-mounting this (a Cortex-A72 description) on /proc/cpuinfo of an emulated
# container fixes it; native arm64 hosts need nothing. Newer qemu emulates the file itself.
EMULATED_AARCH64_CPUINFO = "".join(
    f"processor\t: {cpu}\nBogoMIPS\t: 50.00\n"
    "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
    "CPU part\t: 0xd08\nCPU revision\t: 3\n\n"
    for cpu in range(2)
)


def parse_platform(name: str) -> Platform:
    """The Platform for a Docker platform string (`linux/arm64/v8` is taken as linux/arm64)."""
    key = "/".join(name.strip().lower().split("/")[:2])
    try:
        return PLATFORMS[key]
    except KeyError:
        raise PlatformError(
            f"unsupported platform {name!r}; choose from {', '.join(PLATFORMS)}"
        ) from None


def native_platform() -> Platform:
    """The platform of this machine (amd64 when it is neither of ours)."""
    for candidate in PLATFORMS.values():
        if candidate.is_native():
            return candidate
    return PLATFORMS["linux/amd64"]
