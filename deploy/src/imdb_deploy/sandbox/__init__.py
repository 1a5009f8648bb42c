"""Deploy target hosts simulated on this one machine, reached over real SSH.

Each simulated host is a real `/usr/sbin/sshd` on its own 127.0.0.x address with its own host key,
whose sessions see that host's own Podman storage (through sshd's `SetEnv`). A deploy tool that
connects with Fabric and runs plain `podman ...` and `nginx ...` commands therefore behaves as it
would against real machines: host keys are verified, images are pulled into each host's storage,
containers outlive the SSH session that started them.
"""

from imdb_deploy.sandbox.fleet import Fleet, SandboxError, SandboxHost

__all__ = ["Fleet", "SandboxError", "SandboxHost"]
