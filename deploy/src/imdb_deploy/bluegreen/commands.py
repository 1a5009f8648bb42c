"""The shell commands and files a deploy uses on a host, built as plain data.

Every function here is pure: an environment, a host and a release in, a command line or a file's
text out. Nothing connects anywhere, so the unit tests assert exactly what would run, and the
runner (SSH) and the orchestrator (order, compensation) stay separate layers.

Hosts need a POSIX shell, coreutils, util-linux (flock), curl, Podman and nginx; `setup` checks
for them and installs the missing ones on Debian.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from imdb_deploy.bluegreen.config import USER_PATTERN, Environment, Host
from imdb_deploy.bluegreen.layout import HostLayout
from imdb_deploy.programs import ShellCommand
from imdb_deploy.supply_chain import signing

# Exit codes of the lock's commands, so the caller can tell "held by someone" (or "past its
# expiry") from a failure.
LOCK_HELD = 3
LOCK_EXPIRED = 4
# Exit code of a pull refused because the engine's storage is below the configured free space.
DISK_LOW = 5
# command -> the Debian package that has it (Podman hosts). runc: Podman would otherwise pick crun.
HOST_PACKAGES = {
    "podman": "podman",
    "runc": "runc",
    "nginx": "nginx",
    "curl": "curl",
    "flock": "util-linux",
}
# A deploy user that is not root runs its containers rootless: its subordinate IDs need these.
ROOTLESS_PACKAGES = {"newuidmap": "uidmap"}
# Docker Engine hosts instead of Podman: the engine, and gpgv to check release signatures
# (Docker has no signature policy of its own).
DOCKER_PACKAGES = {"docker": "docker.io", "gpgv": "gpgv"}


def host_packages(environment: Environment) -> dict[str, str]:
    """command -> Debian package, for what the deploy runs on this environment's hosts."""
    common = {tool: package for tool, package in HOST_PACKAGES.items() if tool in COMMON_TOOLS}
    if environment.engine == "docker":
        return {**DOCKER_PACKAGES, **common}
    return {**HOST_PACKAGES, **(ROOTLESS_PACKAGES if environment.sudo else {})}


COMMON_TOOLS = ("nginx", "curl", "flock")
# The root commands a non-root deploy user runs, by absolute path: its sudoers file allows exactly
# these command lines (sudo compares paths and arguments).
NGINX: ShellCommand = "/usr/sbin/nginx"
SYSTEMCTL: ShellCommand = "/usr/bin/systemctl"
# True on a host booted by systemd (sd_booted(3)); restart units are installed only there.
HAS_SYSTEMD: ShellCommand = "[ -d /run/systemd/system ]"
LINGER_DIR = PurePosixPath("/var/lib/systemd/linger")
CONTAINER_LABEL = "io.mlops-imdb"


def q(value: object) -> str:
    """One shell word."""
    return shlex.quote(str(value))


def _nginx(environment: Environment) -> ShellCommand:
    """nginx as the deploy runs it: the system's through sudo for a non-root deploy user."""
    if environment.nginx.mode == "system" and environment.sudo:
        return f"{environment.sudo}{NGINX}"
    return "nginx"


def _nginx_args(environment: Environment, layout: HostLayout) -> str:
    if environment.nginx.mode == "own":
        return f"-c {q(layout.nginx_conf)} -p {q(str(layout.nginx_dir) + '/')}"
    return ""


# ---- setup -------------------------------------------------------------------------------------


def check_tools(tools: Mapping[str, str] = HOST_PACKAGES) -> ShellCommand:
    """Prints the Debian packages whose commands are missing; empty output means all there."""
    checks = [
        f"command -v {tool} >/dev/null 2>&1 || echo {package}" for tool, package in tools.items()
    ]
    return "; ".join(checks)


def install_packages(packages: Sequence[str]) -> ShellCommand:
    """Install Debian packages as root (a real host's first setup). A new server often runs
    unattended-upgrades right after boot: wait for its dpkg lock instead of failing."""
    names = " ".join(q(package) for package in packages)
    apt = "DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300"
    return f"{apt} update -qq && {apt} install -y -qq {names}"


def make_directories(layout: HostLayout) -> ShellCommand:
    env_dir, login_dir = q(layout.env_dir), q(layout.registry_auth_file.parent)
    return (
        f"mkdir -p {q(layout.root)} {q(layout.nginx_dir)} {env_dir} {login_dir} "
        f"&& chmod 700 {env_dir} {login_dir}"
    )


# The system nginx reads only root's files: its upstream, and the one helper that changes it.
SYSTEM_NGINX_DIR = PurePosixPath("/etc/nginx/mlops-imdb")
HELPER_DIR = PurePosixPath("/usr/local/sbin")


def upstream_path(environment: Environment, layout: HostLayout) -> PurePosixPath:
    """Where nginx reads which colour is live: under the deploy root for an own nginx (the
    light sandbox); root's, beside nginx's own configuration, for the system nginx, so that the
    deploy user cannot make root's nginx read or write a path of its choosing."""
    if environment.nginx.mode == "own":
        return layout.upstream_conf
    return SYSTEM_NGINX_DIR / environment.name / "upstream.conf"


def nginx_helper_path(environment: Environment) -> PurePosixPath:
    return HELPER_DIR / f"mlops-imdb-nginx-{environment.name}"


def nginx_helper(environment: Environment, host: Host) -> str:
    """The root-owned helper, the one thing the deploy user may run as root (its sudoers file):
    `blue` or `green` make that colour live (a fixed template, `nginx -t`, reload; the previous
    file back when nginx refuses), `running` reloads a running nginx or starts it. Any other
    argument is refused: nothing the deploy user writes reaches root's nginx."""
    target = SYSTEM_NGINX_DIR / environment.name / "upstream.conf"
    cases = "".join(
        f"    {colour}) server={q(f'{environment.app_bind(host)}:{port}')} ;;\n"
        for colour, port in environment.app.ports.items()
    )
    usage = "|".join(["running", *environment.app.ports])
    return (
        "#!/bin/sh\n"
        f"# Written by `fab setup` for environment {environment.name}: what its deploy user may\n"
        "# run as root. Arguments: a colour (make it live) or `running` (reload, or start).\n"
        "set -eu\n"
        f"target={q(target)}\n"
        'case "${1:-}" in\n'
        "    running)\n"
        f"        if {NGINX} -s reload 2>/dev/null; then echo running; "
        f"else {SYSTEMCTL} start nginx && echo started; fi\n"
        "        exit 0 ;;\n"
        f"{cases}"
        f'    *) echo "usage: $0 {usage}" >&2; exit 2 ;;\n'
        "esac\n"
        'mkdir -p "$(dirname "$target")"\n'
        'cp -p "$target" "$target.previous" 2>/dev/null || : > "$target.previous"\n'
        'printf \'# live colour: %s\\nserver %s;\\n\' "$1" "$server" > "$target.new"\n'
        'mv -f "$target.new" "$target"\n'
        f"if refusal=$({NGINX} -t -q 2>&1); then {NGINX} -s reload; "
        'else mv -f "$target.previous" "$target"; echo "$refusal" >&2; exit 1; fi\n'
    )


def site_path(environment: Environment, layout: HostLayout) -> PurePosixPath:
    """Where the site config goes: under the root (own nginx) or in the system's conf.d."""
    if environment.nginx.mode == "own":
        return layout.site_conf
    return PurePosixPath("/etc/nginx/conf.d") / f"mlops-imdb-{environment.name}.conf"


def nginx_main_conf(environment: Environment, layout: HostLayout) -> str:
    """The whole config of an own nginx (sandbox): one site, logs and temp files under its root."""
    prefix = layout.nginx_dir
    return f"""\
# Written by `fab setup`: the nginx of environment {environment.name} on this host.
worker_processes 1;
user {environment.nginx.user};
pid {layout.nginx_pid};
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {layout.site_conf};
}}
"""


# FastAPI's documentation routes: off the public site unless `nginx.public_docs`.
DOCS_LOCATION = r"~ ^/(docs|redoc|openapi\.json)(/|$)"


def site_conf(environment: Environment, host: Host, layout: HostLayout) -> str:
    """The site: the public port proxies the API to whichever colour upstream.conf names;
    /metrics only to `nginx.metrics_allow`, the documentation only with `nginx.public_docs`."""
    upstream = f"mlops_imdb_{environment.name.replace('-', '_')}"
    proxy = f"""\
        proxy_pass http://{upstream};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Request-Id $request_id;
        proxy_connect_timeout 2s;
        proxy_read_timeout 30s;"""
    allow = "".join(f"        allow {network};\n" for network in environment.nginx.metrics_allow)
    docs = proxy if environment.nginx.public_docs else "        return 404;"
    return f"""\
# Written by `fab setup` for environment {environment.name}; the deploy switches colours by
# rewriting {upstream_path(environment, layout)} and reloading nginx.
upstream {upstream} {{
    include {upstream_path(environment, layout)};
    keepalive 32;
}}
server {{
    listen {environment.http_address(host)};
    keepalive_timeout {environment.nginx.client_keepalive_s:g}s;
    client_max_body_size 8m;
    location = /metrics {{
{allow}        deny all;
{proxy}
    }}
    location {DOCS_LOCATION} {{
{docs}
    }}
    location / {{
{proxy}
    }}
}}
"""


def upstream_conf(environment: Environment, host: Host, colour: str) -> str:
    """The one line that makes `colour` live."""
    address = f"{environment.app_bind(host)}:{environment.app.ports[colour]}"
    return f"# live colour: {colour}\nserver {address};\n"


def nginx_test(environment: Environment, layout: HostLayout) -> ShellCommand:
    return f"{_nginx(environment)} -t -q {_nginx_args(environment, layout)}".rstrip()


def nginx_reload(environment: Environment, layout: HostLayout) -> ShellCommand:
    return f"{_nginx(environment)} -s reload {_nginx_args(environment, layout)}".rstrip()


def switch_upstream(
    environment: Environment, host: Host, layout: HostLayout, colour: str
) -> ShellCommand:
    """Make `colour` live in one step: new upstream, `nginx -t`, reload; when nginx refuses the
    config, the previous upstream file is put back and the command fails with nginx's reason.
    The system nginx's: what its root-owned helper does (through sudo for the deploy user)."""
    if environment.nginx.mode == "system":
        return f"{environment.sudo}{nginx_helper_path(environment)} {q(colour)}"
    target = layout.upstream_conf
    backup = target.with_name(f"{target.name}.previous")
    test = nginx_test(environment, layout)
    return (
        f"{{ cp -p {q(target)} {q(backup)} 2>/dev/null || : > {q(backup)}; }} && "
        f"{write_file(target, upstream_conf(environment, host, colour))} && "
        f"if refusal=$({test} 2>&1); then {nginx_reload(environment, layout)}; "
        f'else mv -f {q(backup)} {q(target)}; echo "$refusal" >&2; exit 1; fi'
    )


def nginx_ensure_running(environment: Environment, layout: HostLayout) -> ShellCommand:
    """Reload a running nginx (prints `running`), start a stopped one (prints `started`); safe
    to repeat."""
    if environment.nginx.mode == "system":
        return f"{environment.sudo}{nginx_helper_path(environment)} running"
    pid = q(layout.nginx_pid)
    return (
        f'if [ -s {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null; '
        f"then {nginx_reload(environment, layout)} && echo running; "
        f"else nginx {_nginx_args(environment, layout)} && echo started; fi"
    )


# ---- a bare host, as root: the deploy user and what it may do as root -------------------------


def sudoers(environment: Environment) -> str:
    """The deploy user's sudoers file: the environment's root-owned nginx helper, without a
    password, and nothing else (its containers are rootless; its files are its own). Not nginx
    itself: `nginx -t` as root reads whatever the configuration includes, and a file the deploy
    user could write would make it include /etc/shadow or log into any path."""
    user = environment.deploy_user
    if not re.fullmatch(USER_PATTERN, user):  # the login's name, when ssh.user is not set
        raise ValueError(f"{user!r} is no user name sudo reads ({USER_PATTERN}): set ssh.user")
    return (
        f"# Written by `fab setup`: what {user} may run as root, and nothing else.\n"
        f"{user} ALL=(root) NOPASSWD: {nginx_helper_path(environment)}\n"
    )


def sudoers_path(user: str) -> PurePosixPath:
    return PurePosixPath("/etc/sudoers.d") / f"mlops-imdb-{user}"


def install_sudoers(staged: PurePosixPath, target: PurePosixPath) -> ShellCommand:
    """Install a staged sudoers file only if `visudo -c` accepts it (a broken file in
    sudoers.d would lock every sudo user out); else remove it and fail with visudo's reason."""
    return (
        f"if visudo -c -f {q(staged)} >&2; then chown root:root {q(staged)} && "
        f"chmod 440 {q(staged)} && mv -f {q(staged)} {q(target)}; "
        f"else rm -f {q(staged)}; exit 1; fi"
    )


def ensure_user(user: str) -> ShellCommand:
    """Make the login user `user` with a home unless it exists; prints `created` if made."""
    return (
        f"id -u {q(user)} >/dev/null 2>&1 || "
        f"{{ useradd --create-home --shell /bin/bash {q(user)} && echo created; }}"
    )


def user_home(user: str) -> ShellCommand:
    """Prints the home directory of `user`."""
    return f"getent passwd {q(user)} | cut -d: -f6"


def own_ssh_dir(user: str, home: PurePosixPath) -> ShellCommand:
    """The user's ~/.ssh: there, its own, mode 700 (sshd refuses keys in a laxer one)."""
    ssh_dir = q(home / ".ssh")
    return f"install -d -m 700 -o {q(user)} -g {q(user)} {ssh_dir} && chown -R {q(user)}: {ssh_dir}"


def reader_authorized_keys(layout: HostLayout, public_key: str) -> str:
    """The reader's authorized_keys: its one key, allowed one command, the one that prints the
    release state, whatever the client asks (`restrict`: no shell, no forwarding, no terminal,
    no agent; `command=`: that command only)."""
    command = read_file(layout.state_file)
    if '"' in command or "\\" in command:  # safe paths only (config.SAFE_PATH_PATTERN)
        raise ValueError(f"{layout.state_file}: not a path an authorized_keys command can hold")
    key = " ".join(public_key.split()[:2])  # type and key; the comment may say anything
    return f'restrict,command="{command}" {key} mlops-imdb reader\n'


def root_owned_ssh_dir(home: PurePosixPath) -> ShellCommand:
    """A ~/.ssh the user cannot change (root's, mode 755; its authorized_keys root's too): the
    reader's key and its restriction are setup's to set, not the reader's."""
    ssh_dir, keys = q(home / ".ssh"), q(home / ".ssh" / "authorized_keys")
    return (
        f"install -d -m 755 -o root -g root {ssh_dir} && "
        f"if [ -e {keys} ]; then chown root:root {keys}; fi"
    )


def enable_linger(user: str) -> ShellCommand:
    """Let `user`'s systemd instance run without a login, from boot (its restore unit and its
    rootless containers need it); prints `enabled` when it changed. Nothing without systemd."""
    return (
        f"if {HAS_SYSTEMD} && [ ! -e {q(LINGER_DIR / user)} ]; then "
        f"loginctl enable-linger {q(user)} && echo enabled; fi"
    )


def own_directory(path: PurePosixPath, user: str) -> ShellCommand:
    """`path` exists and belongs to `user` (the deploy root: everything below is the user's)."""
    return f"install -d -m 755 -o {q(user)} -g {q(user)} {q(path)}"


def disable_default_site() -> ShellCommand:
    """Debian's nginx serves a default site on port 80 of every address: a host dedicated to
    the API does not; prints `removed` when it was there."""
    default = "/etc/nginx/sites-enabled/default"
    return f"if [ -e {default} ]; then rm -f {default} && echo removed; fi"


# ---- back after a reboot ---------------------------------------------------------------------


def restore_script(environment: Environment, layout: HostLayout, host: Host) -> ShellCommand:
    """Start the colour nginx sends traffic to (upstream.conf says which) after a boot; the
    kept colour stays stopped. Run by the restore unit; what it did is an audit entry (action
    `restore`, user `boot`), so `fab audit` shows a host that came back by itself.

    The container is started in a scope of its own (`systemd-run --scope`), as a deploy's SSH
    session would: left in the unit's own cgroup, stopping the unit at shutdown waited out its
    whole stop timeout (24-31 s per reboot, measured), and with the scope a reboot takes 1-2 s."""
    cases = "".join(
        f"    {colour}) name={q(environment.container_name(colour))} ;;\n"
        for colour in environment.app.ports
    )
    entry = (
        '{"action":"restore","environment":"%s","host":"%s","id":"%s","logged_at":"%s",'
        f'"prev":"{PREV_PLACEHOLDER}","result":"%s","detail":"%s","user":"boot"}}'
    )
    line = q(entry)  # printf's format: one JSON line
    append = chained_append(layout, '"$line"')
    # The deploy user's own manager (its containers are rootless), or the system's for root.
    scope = f"systemd-run{' --user' if environment.sudo else ''} --scope --quiet --collect"
    return (
        "#!/bin/sh\n"
        f"# Written by `fab setup`: at boot, start the live colour of {environment.name}.\n"
        f"colour=$(sed -n 's/^# live colour: //p' {q(upstream_path(environment, layout))})\n"
        'case "$colour" in\n'
        f"{cases}"
        '    *) echo "nothing live yet"; exit 0 ;;\n'
        "esac\n"
        f'if out=$({scope} {environment.engine} start "$name" 2>&1); then result=ok; '
        'detail="started $colour ($name) after a boot"; else result=failed; '
        'detail="could not start $colour after a boot: $(printf \'%s\' "$out" | '
        "tr -d '\"\\\\' | tr '\\n' ' ')\"; fi\n"
        "id=$(tr -d - < /proc/sys/kernel/random/uuid | cut -c1-12)\n"
        "now=$(date -u +%Y-%m-%dT%H:%M:%S.%6N+00:00)\n"
        f"line=$(printf {line} {q(environment.name)} {q(host.name)} "
        '"$id" "$now" "$result" "$detail")\n'
        f"{append}\n"
        'echo "$detail"\n'
        '[ "$result" = ok ]\n'
    )


def restore_unit(environment: Environment, script: PurePosixPath, *, user_unit: bool) -> str:
    """The systemd unit that runs the restore script once per boot: the deploy user's own unit
    (its containers are rootless), or a system unit for root."""
    target = "default.target" if user_unit else "multi-user.target"
    # The script's `systemd-run --scope` talks to the manager over D-Bus.
    after = (
        "Wants=dbus.socket\nAfter=dbus.socket dbus.service\n"
        if user_unit
        else "After=network-online.target nginx.service dbus.service\n"
    )
    return (
        "[Unit]\n"
        f"Description=mlops-imdb {environment.name}: the live colour, started after a boot\n"
        f"{after}"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"ExecStart=/bin/sh {script}\n"
        "[Install]\n"
        f"WantedBy={target}\n"
    )


def unit_directory(home: str, *, user_unit: bool) -> PurePosixPath:
    if user_unit:
        return PurePosixPath(home) / ".config" / "systemd" / "user"
    return PurePosixPath("/etc/systemd/system")


def enable_unit(directory: PurePosixPath, unit: str, *, user_unit: bool) -> ShellCommand:
    """Enable a unit by its wants link (what `systemctl enable` makes; no running manager
    needed, so it works before the user's first login)."""
    wants = directory / f"{'default' if user_unit else 'multi-user'}.target.wants"
    return f"mkdir -p {q(wants)} && ln -sfn ../{q(unit)} {q(wants / unit)}"


# ---- image trust (the engine verifies signatures; see imdb_deploy.supply_chain.signing) -----


def home_directory() -> ShellCommand:
    """Prints the SSH user's home (what `~/` in `containers_config` means on that host)."""
    return 'printf "%s" "$HOME"'


# A rootless engine's storage: native overlay (kernel 5.13+; Debian 12 has 6.1, Ubuntu 24.04 6.8)
# shares image layers. Left to itself, Debian's Podman 4.3 may fall back to vfs, which copies every
# layer in full on each pull: slower deploys and several times the disk.
ROOTLESS_STORAGE_MARK = "# Written by mlops-imdb setup"
ROOTLESS_STORAGE_CONF = f"""{ROOTLESS_STORAGE_MARK}: rootless Podman on native overlay.
[storage]
driver = "overlay"
"""


def rootless_storage_conf(home: str) -> PurePosixPath:
    """The deploy user's own storage settings, read before /etc's (containers-storage.conf(5))."""
    return PurePosixPath(home) / ".config" / "containers" / "storage.conf"


def rootless_storage_state(home: str) -> ShellCommand:
    """Prints what decides whether setup may set the driver: `own` when the user has a
    storage.conf setup did not write, `vfs` when the engine already keeps images in vfs (a
    change of driver would need `podman system reset`, which deletes them), else nothing."""
    conf = q(rootless_storage_conf(home))
    vfs = q(PurePosixPath(home) / ".local" / "share" / "containers" / "storage" / "vfs")
    return (
        f"if [ -f {conf} ] && ! grep -qF {q(ROOTLESS_STORAGE_MARK)} {conf}; then echo own; "
        f"elif [ ! -f {conf} ] && [ -d {vfs} ]; then echo vfs; fi"
    )


@dataclass(frozen=True)
class TrustFiles:
    """Where setup puts an environment's image trust in the host's engine configuration."""

    config_dir: PurePosixPath

    @property
    def policy(self) -> PurePosixPath:
        return self.config_dir / "policy.json"

    def registries_d(self, environment: Environment) -> PurePosixPath:
        return self.config_dir / "registries.d" / f"mlops-imdb-{environment.name}.yaml"

    def public_key(self, environment: Environment) -> PurePosixPath:
        return self.config_dir / "keys" / f"mlops-imdb-{environment.name}.asc"


def trust_config_dir(configured: str, home: str) -> PurePosixPath:
    """`containers_config` with a leading `~/` made absolute with the host's `home`."""
    if configured.startswith("~/"):
        if not home.startswith("/"):
            raise ValueError(f"the host's home {home!r} is not an absolute path")
        return PurePosixPath(home) / configured[2:]
    return PurePosixPath(configured)


def make_trust_directories(files: TrustFiles, layout: HostLayout) -> ShellCommand:
    dirs = [files.config_dir / "registries.d", files.config_dir / "keys", layout.signatures_dir]
    return "mkdir -p " + " ".join(q(directory) for directory in dirs)


def registry_auth(registry: str, user: str, password: str) -> str:
    """The auth file's text (containers-auth.json(5)): one login for `registry`. It goes to the
    host by SFTP only, with mode 600."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return json.dumps({"auths": {registry: {"auth": token}}}, indent=2) + "\n"


def _engine(engine: str, authfile: PurePosixPath | None = None) -> ShellCommand:
    """The engine's command, with the registry login for a pull: Podman takes the file
    (`pull --authfile F`, see `_authfile`), Docker the directory holding it as config.json."""
    if engine == "docker" and authfile is not None:
        return f"docker --config {q(authfile.parent)}"
    return engine


def _authfile(authfile: PurePosixPath | None, engine: str = "podman") -> str:
    return f" --authfile {q(authfile)}" if authfile is not None and engine == "podman" else ""


def fetch_signatures(
    environment: Environment,
    digest: str,
    layout: HostLayout,
    authfile: PurePosixPath | None = None,
) -> ShellCommand:
    """Copy the release's published signatures (its carrier image) into the host's lookaside
    directory: only the carrier's directory for this digest (a carrier that holds others'
    overwrites nothing of theirs). Prints `signatures fetched`, or `no signatures published`
    when the registry has no carrier for the digest, or the carrier none for it (then the pull
    that follows is what refuses: the engine's policy; this step never decides trust). Any other
    failure (the registry unreachable) exits non-zero with the engine's message, so the caller
    can retry it."""
    carrier = q(signing.carrier_reference(environment.image, digest))
    entry = signing.lookaside_entry(environment.image, digest)
    inside = q(f"/{signing.CARRIER_ROOT}/{entry}/.")
    target = q(layout.signatures_dir / entry)
    engine = environment.engine
    pull = f"{_engine(engine, authfile)} pull --quiet{_authfile(authfile, engine)}"
    return (
        f"mkdir -p {target} && "
        f"if out=$({pull} {carrier} 2>&1 >/dev/null); then "
        f"c=$({engine} create {carrier} none) && "
        f'{engine} cp "$c":{inside} {target}/ >/dev/null 2>&1; status=$?; '
        f'{engine} rm "$c" >/dev/null; {engine} rmi {carrier} >/dev/null; '
        'if [ "$status" -eq 0 ]; then echo signatures fetched; '
        "else echo no signatures published; fi; "
        'else case "$out" in *"manifest unknown"*|*"name unknown"*) '
        "echo no signatures published ;; "
        "*) printf '%s\\n' \"$out\" >&2; exit 1 ;; esac; fi"
    )


def verify_signature(environment: Environment, digest: str, layout: HostLayout) -> ShellCommand:
    """Docker hosts: the engine checks no signatures, so the deploy does, before the pull. One
    of the release's fetched signatures must verify with gpgv against the environment's key
    (setup's keyring) and name this digest and this repository. Prints that it is signed, or
    exits 1 saying no signature by the key names the digest."""
    directory = q(layout.signatures_dir / signing.lookaside_entry(environment.image, digest))
    names_digest = q(f'"docker-manifest-digest":"{digest}"')
    # In an ERE only '.' of an image name's characters ([a-z0-9._/:-]) is special.
    names_image = q('"docker-reference":"' + environment.image.replace(".", "\\.") + '[:@"]')
    return (
        f'found=0; for s in {directory}/signature-*; do [ -f "$s" ] || continue; '
        f'payload=$(gpgv --keyring {q(layout.release_keyring)} --output - "$s" 2>/dev/null) '
        f'|| continue; printf %s "$payload" | grep -qF {names_digest} || continue; '
        f'printf %s "$payload" | grep -qE {names_image} || continue; found=1; break; done; '
        'if [ "$found" = 1 ]; then echo "signature verified (gpgv)"; else '
        f"echo {q(f'no signature of {digest} by the environment key names it')} >&2; exit 1; fi"
    )


def write_binary(path: PurePosixPath, data: bytes, mode: int = 0o644) -> ShellCommand:
    """Write a small binary, non-secret file (a public keyring) atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    encoded = base64.b64encode(data).decode()
    return (
        f"printf '%s' {q(encoded)} | base64 -d > {q(temporary)} && chmod {mode:o} {q(temporary)}"
        f" && mv -f {q(temporary)} {q(path)}"
    )


def join_group(user: str, group: str) -> ShellCommand:
    """`user` in `group` (prints `added` when it was not)."""
    return (
        f"id -nG {q(user)} | tr ' ' '\\n' | grep -qx {q(group)} || "
        f"{{ usermod -aG {q(group)} {q(user)} && echo added; }}"
    )


# ---- files -------------------------------------------------------------------------------------


def install_file(
    temporary: PurePosixPath, target: PurePosixPath, mode: int = 0o644
) -> ShellCommand:
    """Move an uploaded file into place atomically (rename within one directory)."""
    return f"chmod {mode:o} {q(temporary)} && mv -f {q(temporary)} {q(target)}"


# Whether the login may run anything as root without a password (a cloud image's admin user).
SUDO_CHECK: ShellCommand = "sudo -n true"


def as_root(command: str) -> ShellCommand:
    """`command` (a shell line) run as root by a login with passwordless sudo; never prompts."""
    return f"sudo -n sh -c {q(command)}"


def install_root_file(
    staged: PurePosixPath, target: PurePosixPath, mode: int = 0o644
) -> ShellCommand:
    """As root: a file the login uploaded to `staged`, put in place owned by root (sshd and sudo
    refuse files others own), atomically (copied beside the target, then renamed)."""
    beside = target.with_name(f".{target.name}.tmp")
    return (
        f"install -o root -g root -m {mode:o} {q(staged)} {q(beside)} "
        f"&& mv -f {q(beside)} {q(target)}"
    )


def write_file(path: PurePosixPath, text: str) -> ShellCommand:
    """Write a small, non-secret file atomically within one command (saves the SFTP round
    trips; secrets go by SFTP instead, never on a command line)."""
    temporary = path.with_name(f".{path.name}.tmp")
    return f"printf '%s' {q(text)} > {q(temporary)} && mv -f {q(temporary)} {q(path)}"


def remove_file(path: PurePosixPath) -> ShellCommand:
    return f"rm -f {q(path)}"


def read_file(path: PurePosixPath) -> ShellCommand:
    """Print a file, or nothing when it does not exist."""
    return f"cat {q(path)} 2>/dev/null || true"


JOURNAL_SEPARATOR = "\n--- journal ---\n"


def read_state_and_journal(layout: HostLayout) -> ShellCommand:
    """Both records in one trip, split by JOURNAL_SEPARATOR."""
    return (
        f"cat {q(layout.state_file)} 2>/dev/null; printf {q(JOURNAL_SEPARATOR)}; "
        f"cat {q(layout.journal)} 2>/dev/null; true"
    )


def env_file(values: Mapping[str, str]) -> str:
    """A Podman --env-file: one NAME=value per line, values taken literally."""
    for name, value in values.items():
        if "\n" in value or "\r" in value:
            raise ValueError(f"{name}: values in an env file cannot span lines")
    return "".join(f"{name}={value}\n" for name, value in sorted(values.items()))


def restore_file(backup: PurePosixPath, target: PurePosixPath) -> ShellCommand:
    return f"mv -f {q(backup)} {q(target)}"


def backup_file(target: PurePosixPath, backup: PurePosixPath) -> ShellCommand:
    return f"cp -p {q(target)} {q(backup)}"


# ---- images and containers ---------------------------------------------------------------------

# Where each engine keeps its images (the disk a pull fills), as its `info` prints it.
ENGINE_ROOT = {"podman": "{{.Store.GraphRoot}}", "docker": "{{.DockerRootDir}}"}


def pull(image: str) -> ShellCommand:
    return f"podman pull --quiet {q(image)}"


def ensure_image(
    image: str,
    min_free_mb: int = 0,
    authfile: PurePosixPath | None = None,
    engine: str = "podman",
) -> ShellCommand:
    """Pull unless present (a release tag never moves); prints `present` or `pulled`. Before a
    pull, the engine's storage must have `min_free_mb` free: else it says how much there is and
    exits DISK_LOW, before a pull could fill the disk the running release writes to. A private
    registry's login comes from `authfile`."""
    free = "df -Pk \"$root\" | awk 'NR == 2 { print int($4 / 1024) }'"
    pull = f"{_engine(engine, authfile)} pull --quiet{_authfile(authfile, engine)}"
    return (
        f"if {image_exists(image, engine)}; then echo present; else "
        f"root=$({engine} info --format {q(ENGINE_ROOT[engine])}) && "
        f'free=$({free}) && if [ "$free" -lt {int(min_free_mb)} ]; then '
        f'echo "only $free MB free in $root (the engine\'s storage)" >&2; exit {DISK_LOW}; fi && '
        f"{pull} {q(image)} >/dev/null && echo pulled; fi"
    )


# What a registry or the network says when trying again later may help: the connection
# refused, reset or timed out, a proxy or registry answering 5xx or 429.
TRANSIENT_PULL_ERRORS = (
    "connection refused", "connection reset", "broken pipe", "i/o timeout", "timeout",
    "timed out", "no route to host", "network is unreachable", "temporary failure in name "
    "resolution", "eof", "500 internal server error", "502 bad gateway",
    "503 service unavailable", "504 gateway timeout", "429 too many requests",
    "toomanyrequests",
)  # fmt: skip


def transient_pull_error(stderr: str) -> bool:
    """True when a failed pull (or signature fetch) is worth another try: the registry or the
    way to it failed, not the image (unknown, unsigned, corrupt, unauthorized)."""
    text = stderr.lower()
    return any(marker in text for marker in TRANSIENT_PULL_ERRORS)


def image_exists(image: str, engine: str = "podman") -> ShellCommand:
    if engine == "docker":
        return f"docker image inspect {q(image)} >/dev/null 2>&1"
    return f"podman image exists {q(image)}"


def image_labels(image: str, engine: str = "podman") -> ShellCommand:
    labels = ".Config.Labels" if engine == "docker" else ".Labels"
    return f"{engine} image inspect --format '{{{{json {labels}}}}}' {q(image)}"


def remove_image(image: str, engine: str = "podman") -> ShellCommand:
    if engine == "docker":  # no --ignore: ask first
        return f"if {image_exists(image, engine)}; then docker rmi {q(image)} >/dev/null; fi"
    return f"podman rmi --ignore {q(image)}"


def container_exists(name: str, engine: str = "podman") -> ShellCommand:
    if engine == "docker":
        return f"docker container inspect {q(name)} >/dev/null 2>&1"
    return f"podman container exists {q(name)}"


def remove_container(name: str, engine: str = "podman") -> ShellCommand:
    if engine == "docker":
        return (
            f"if {container_exists(name, engine)}; then docker rm --force {q(name)} >/dev/null; fi"
        )
    return f"podman rm --force --ignore --time 5 {q(name)}"


def set_aside(name: str, engine: str = "podman") -> ShellCommand:
    """Before a new release takes a colour: its container (the kept release, the rollback
    target) renamed `<name>-previous`, not removed, so a deploy that fails can put it back.
    Stopped first: a colour left running (a takeover, a half-done switch) would otherwise keep
    its port under the new name, and the new release could not bind it. Prints `set aside`
    when there was one."""
    previous = f"{name}-previous"
    return (
        f"{remove_container(previous, engine)} >/dev/null && "
        f"if {container_exists(name, engine)}; then "
        f"{engine} stop --time 5 {q(name)} >/dev/null && "
        f"{engine} rename {q(name)} {q(previous)} >/dev/null && echo set aside; fi"
    )


def put_back(name: str, engine: str = "podman") -> ShellCommand:
    """Undo `set_aside`: the new release's container removed, the kept one's name back."""
    previous = f"{name}-previous"
    return (
        f"{remove_container(name, engine)} >/dev/null && "
        f"if {container_exists(previous, engine)}; then "
        f"{engine} rename {q(previous)} {q(name)} >/dev/null && echo put back; fi"
    )


def run_container(
    environment: Environment,
    host: Host,
    colour: str,
    version: str,
    layout: HostLayout,
    *,
    digest: str | None = None,
) -> ShellCommand:
    """Start one colour: host network on its own port, read-only, no privileges, the settings
    from the env file (secrets never appear on a command line)."""
    port = environment.app.ports[colour]
    labels = {
        f"{CONTAINER_LABEL}.environment": environment.name,
        f"{CONTAINER_LABEL}.colour": colour,
        f"{CONTAINER_LABEL}.version": version,
    }
    argv = [
        environment.engine,
        "run",
        "--detach",
        f"--name={environment.container_name(colour)}",
        "--network=host",
        "--read-only",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        restart_policy(environment.app.restart_attempts),
        f"--stop-timeout={int(environment.app.stop_timeout_s)}",
        f"--env-file={layout.env_file(colour)}",
        f"--env=IMDB_API_HOST={environment.app_bind(host)}",
        f"--env=IMDB_API_PORT={port}",
        *(f"--label={key}={value}" for key, value in labels.items()),
        environment.image_ref(version, digest),
    ]
    return " ".join(q(arg) for arg in argv)


def restart_policy(attempts: int) -> str:
    """The engine restarts a container that exited with an error, `attempts` times at most."""
    return f"--restart=on-failure:{attempts}" if attempts else "--restart=no"


def start_container(name: str, engine: str = "podman") -> ShellCommand:
    return f"{engine} start {q(name)}"


def stop_container(name: str, timeout_s: float, engine: str = "podman") -> ShellCommand:
    """SIGTERM (the API drains in-flight requests), SIGKILL after the grace period."""
    if engine == "docker":
        stop = f"docker stop --time {int(timeout_s)} {q(name)} >/dev/null"
        return f"if {container_exists(name, engine)}; then {stop}; fi"
    return f"podman stop --ignore --time {int(timeout_s)} {q(name)}"


def container_logs(name: str, lines: int = 30, engine: str = "podman") -> ShellCommand:
    return f"{engine} logs --tail {lines} {q(name)} 2>&1 || true"


def why_not_ready(
    name: str, ready_url: str, lines: int = 8, engine: str = "podman"
) -> ShellCommand:
    """What /ready says now (its body names the reason) and the container's last log lines
    that are not access logs (the readiness probes would drown everything else)."""
    return (
        f'echo "/ready: $(curl -sS --max-time 2 {q(ready_url)} 2>&1)"; '
        f"{engine} logs --tail 300 {q(name)} 2>&1 | grep -v '\"imdb_api.access\"' | "
        f"tail -n {lines}; "
        "true"
    )


def list_containers(environment: Environment) -> ShellCommand:
    """The environment's containers: a JSON list (Podman), one JSON object per line (Docker)."""
    label = f"{CONTAINER_LABEL}.environment={environment.name}"
    output = "json" if environment.engine == "podman" else "'{{json .}}'"
    return f"{environment.engine} ps --all --format {output} --filter label={q(label)}"


# ---- HTTP on the host ---------------------------------------------------------------------------


def colour_url(environment: Environment, host: Host, colour: str, path: str) -> str:
    return f"http://{environment.app_bind(host)}:{environment.app.ports[colour]}{path}"


def public_url(environment: Environment, host: Host, path: str) -> str:
    return f"http://{environment.http_address(host)}{path}"


def wait_ready(url: str, passes: int, interval_s: float, timeout_s: float) -> ShellCommand:
    """Poll `url` until it answers 2xx `passes` times in a row; exit 1 after `timeout_s`.

    One command for the whole wait, so it costs one SSH round trip, not one per probe.
    """
    attempts = max(1, int(timeout_s / interval_s))
    return (
        f"ok=0; i=0; while [ $i -lt {attempts} ]; do i=$((i+1)); "
        f"if curl -fsS -o /dev/null --max-time 2 {q(url)} 2>/dev/null; "
        f"then ok=$((ok+1)); [ $ok -ge {passes} ] && exit 0; else ok=0; fi; "
        f"sleep {interval_s}; done; exit 1"
    )


def http_get(url: str, timeout_s: float = 5) -> ShellCommand:
    return f"curl -fsS --max-time {timeout_s:g} {q(url)}"


def http_post_json(url: str, body: object, timeout_s: float = 10) -> ShellCommand:
    payload = json.dumps(body, separators=(",", ":"))
    return (
        f"curl -fsS --max-time {timeout_s:g} -H 'content-type: application/json' "
        f"--data-binary {q(payload)} {q(url)}"
    )


# ---- lock and audit ----------------------------------------------------------------------------
# The lock is three files changed only under flock(1), so "check, then take" is one atomic step:
# lock.json (the holder's record), lock.token and lock.expires (host clock, epoch seconds). The
# holder's heartbeat pushes the expiry forward; a holder that died stops renewing, the lock expires.


def _locked(layout: HostLayout, script: str) -> ShellCommand:
    mutex = layout.lock_mutex
    return f"mkdir -p {q(layout.root)} && flock -w 10 {q(mutex)} sh -c {q(script)}"


def _lock_files(layout: HostLayout) -> tuple[str, str, str]:
    return q(layout.lock_record), q(layout.lock_token), q(layout.lock_expires)


def lock_acquire(
    layout: HostLayout, holder: Mapping[str, object], token: str, ttl_s: float
) -> ShellCommand:
    """Take the lock if it is free or expired: prints `acquired`, or `expired` and the stale
    holder's record. When it is held, prints the holder's record and exits LOCK_HELD."""
    record, token_file, expires = _lock_files(layout)
    script = (
        "now=$(date +%s); "
        f"if [ -s {token_file} ]; then "
        f'if [ "$(cat {expires} 2>/dev/null || echo 0)" -gt "$now" ]; '
        f"then cat {record}; exit {LOCK_HELD}; fi; "
        f"echo expired; cat {record}; echo; else echo acquired; fi; "
        f"printf '%s' {q(json.dumps(dict(holder), sort_keys=True))} > {record} && "
        f"echo $((now + {int(ttl_s)})) > {expires} && printf '%s' {q(token)} > {token_file}"
    )
    return _locked(layout, script)


def lock_renew(layout: HostLayout, token: str, ttl_s: float) -> ShellCommand:
    """Push the expiry forward while the lock is still ours and not yet expired; else exit
    LOCK_HELD (someone else's, or none) or LOCK_EXPIRED (anyone could have taken it since)."""
    _, token_file, expires = _lock_files(layout)
    script = (
        f'[ "$(cat {token_file} 2>/dev/null)" = {q(token)} ] || exit {LOCK_HELD}; '
        "now=$(date +%s); "
        f'[ "$(cat {expires} 2>/dev/null || echo 0)" -gt "$now" ] || exit {LOCK_EXPIRED}; '
        f"echo $((now + {int(ttl_s)})) > {expires}"
    )
    return _locked(layout, script)


def lock_release(layout: HostLayout, token: str) -> ShellCommand:
    """Remove the lock if it is still ours; someone else's is left alone."""
    record, token_file, expires = _lock_files(layout)
    script = (
        f'if [ "$(cat {token_file} 2>/dev/null)" = {q(token)} ]; '
        f"then rm -f {token_file} {record} {expires}; fi"
    )
    return _locked(layout, script)


def lock_force_release(layout: HostLayout) -> ShellCommand:
    """Remove whoever's lock (`fab unlock`); prints the record it removed."""
    record, token_file, expires = _lock_files(layout)
    return _locked(layout, f"cat {record} 2>/dev/null; rm -f {token_file} {record} {expires}")


def lock_show(layout: HostLayout) -> ShellCommand:
    """Three lines: the host's clock, the expiry and the holder's record (empty when free)."""
    record, token_file, expires = _lock_files(layout)
    return (
        f"date +%s; if [ -s {token_file} ]; then cat {expires}; cat {record}; echo; "
        "else echo 0; echo; fi"
    )


# An audit entry's field that the host fills in with the sha256 of the line before it.
PREV_PLACEHOLDER = "@PREV@"
_FILL = f's/\\"prev\\":\\"{PREV_PLACEHOLDER}\\"/\\"prev\\":\\"$p\\"/'
_CHAIN = (
    'p=$(tail -n 1 "$1" 2>/dev/null | sha256sum | cut -c1-64); '
    f'printf "%s\\n" "$2" | sed "{_FILL}" >> "$1"'
)


def chained_append(layout: HostLayout, line: str) -> ShellCommand:
    """Append `line` (a shell word: one JSON line whose "prev" is PREV_PLACEHOLDER) with "prev"
    set to the sha256 of the log's last line (with its newline; of nothing for the first
    entry), under the log's lock: each entry names the one before it, so an edited or removed
    line breaks the chain where it was (`fab audit --verify`)."""
    script = q(_CHAIN)
    return f"flock -w 10 {q(layout.audit_mutex)} sh -c {script} sh {q(layout.audit_log)} {line}"


def audit_append(layout: HostLayout, entry: Mapping[str, object]) -> ShellCommand:
    """Append one JSON line, chained to the one before it (see chained_append)."""
    line = json.dumps({**entry, "prev": PREV_PLACEHOLDER}, sort_keys=True, separators=(",", ":"))
    return f"mkdir -p {q(layout.root)} && {chained_append(layout, q(line))}"


def audit_whole(layout: HostLayout) -> ShellCommand:
    """The whole audit log (nothing when there is none yet), to check its chain."""
    return f"cat {q(layout.audit_log)} 2>/dev/null || true"


def audit_read(layout: HostLayout, lines: int) -> ShellCommand:
    return f"tail -n {lines} {q(layout.audit_log)} 2>/dev/null || true"
