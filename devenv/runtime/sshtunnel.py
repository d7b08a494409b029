"""DOCKER_HOST=ssh://[user@]host[:port]: the engine and the stack's ports, through OpenSSH's own `ssh`.

One master connection per engine (`ssh -M -S <control socket> -fN`), started on the first
command that needs the engine and started again by the next one when it died (a reboot, a
dropped network). Through it:

- the engine's API socket on the remote host (asked once: the remote's DOCKER_HOST, else
  /var/run/docker.sock; recorded) is forwarded to a local unix socket, which the docker SDK
  talks to (no paramiko, no `docker system dial-stdio` on the remote);
- each stack's ports: its containers publish on the remote host's 127.0.0.1, and this
  machine's 127.0.0.1:P forwards to the remote's 127.0.0.1:P (`ssh -O forward`), so the URLs
  name 127.0.0.1 and the same ports as on a local engine.

The control socket, the API socket, the record of each stack's forwards and ssh's own log live
in a private (0700) directory per engine, keyed by a hash of the URL, next to the machine's
registry of stacks. The master stays while any stack has forwards recorded there: `down`
cancels its stack's forwards, and the last one closes the master (a master kept for nothing
would hold an SSH session open on someone's devbox).

ssh runs with BatchMode=yes (it never prompts), the user's ssh config and agent (or the file
DEVENV_SSH_CONFIG names, passed as -F); devenv never holds a password or key itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

from devenv.errors import ConfigError, DependencyError, DevenvError, StateError

if TYPE_CHECKING:
    from devenv.config.stack import Stack

SSH_CONFIG = "DEVENV_SSH_CONFIG"  # an ssh config file for devenv's ssh (-F), e.g. the CI lane's
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
CONNECT_TIMEOUT = 10  # seconds for ssh to reach and authenticate with the host
COMMAND_TIMEOUT = 30.0  # one ssh invocation, connection included
LOCK_TIMEOUT = 60.0
# The remote's engine address (its DOCKER_HOST, else the default socket), and whether that socket
# exists: one round trip through the master. POSIX sh (the login shell runs it: bash, dash, zsh).
ASK_SOCKET = ('h="${DOCKER_HOST:-' + DEFAULT_SOCKET + '}"; echo "$h"; '
              'case "$h" in unix://*) test -S "${h#unix://}" && echo socket;; esac; exit 0')


@dataclass(frozen=True)
class Target:
    """An ssh:// engine address, taken apart for ssh's own options."""

    url: str
    host: str
    user: str = ""
    port: int = 0

    def argv(self, env: Mapping[str, str]) -> list[str]:
        """`ssh` with devenv's fixed options, without the destination (see `cmd`)."""
        ssh = shutil.which("ssh", path=env.get("PATH") or os.defpath)
        if ssh is None:
            raise DependencyError(
                f"the ssh client is not installed: the Docker engine at {self.url} is reached through OpenSSH's ssh",
                hint="install OpenSSH's client (Debian/Ubuntu `apt-get install openssh-client`), or point DOCKER_HOST "
                "at the engine's tcp:// address.")
        argv = [ssh]
        if env.get(SSH_CONFIG, "").strip():
            argv += ["-F", env[SSH_CONFIG].strip()]
        argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT}"]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.user:
            argv += ["-l", self.user]
        return argv

    def cmd(self, env: Mapping[str, str], *options: str) -> list[str]:
        """A full ssh command line: fixed options, `options`, then `--` and the host."""
        return [*self.argv(env), *options, "--", self.host]


def parse(url: str) -> Target:
    """An ssh:// URL taken apart; ConfigError for what ssh could not be given safely (a password,
    a path, a host that would read as an option)."""
    from urllib.parse import unquote, urlsplit

    where = f"DOCKER_HOST={url}" if "@" not in url else "DOCKER_HOST (an ssh:// address)"
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError as exc:  # an unclosed [ of an IPv6 address
        raise ConfigError(f"{where} is not an ssh://[user@]host[:port] address: {exc}",
                          hint="set DOCKER_HOST=ssh://[user@]host[:port] (a name from your ssh config works).") from exc
    if parts.scheme != "ssh" or not hostname:
        raise ConfigError(f"{where} is not an ssh://[user@]host[:port] address",
                          hint="set DOCKER_HOST=ssh://[user@]host[:port] (a name from your ssh config works).")
    if parts.password is not None:  # never on a command line, never in a log: refuse it outright
        raise ConfigError("DOCKER_HOST holds a password in its ssh:// address",
                          hint="remove it from DOCKER_HOST: devenv's ssh never prompts; use a key (ssh-agent, "
                          "or IdentityFile in ~/.ssh/config).")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{where} has a path after the host", hint="use ssh://[user@]host[:port], nothing after it.")
    try:
        port = parts.port or 0
    except ValueError as exc:
        raise ConfigError(f"{where} has an invalid port", hint="use ssh://[user@]host[:port].") from exc
    user = unquote(parts.username or "")
    if parts.hostname.startswith("-") or user.startswith("-"):
        raise ConfigError(f"{where}: a host or user starting with '-' would read as an ssh option",
                          hint="name the host as ssh knows it (an alias from your ssh config works).")
    return Target(url=url, host=parts.hostname, user=user, port=port)


# ---- where a master keeps its sockets -----------------------------------------------------------


@dataclass(frozen=True)
class Paths:
    """The private directory of one engine's master, and what is in it."""

    dir: Path

    @property
    def control(self) -> Path:
        """The master's control socket (ssh -S)."""
        return self.dir / "ctl"

    @property
    def api(self) -> Path:
        """The local end of the engine's API socket, forwarded."""
        return self.dir / "api.sock"

    @property
    def record(self) -> Path:
        """{"socket": the remote engine address, "forwards": {stack name: {service: port}}}."""
        return self.dir / "tunnel.json"

    @property
    def log(self) -> Path:
        """ssh's stderr (the master's and each command's, one at a time): read back for errors."""
        return self.dir / "ssh.log"


def paths(url: str) -> Paths:
    """Where the master for `url` keeps its sockets: beside the machine's registry of stacks
    (/var/lib/devenv/ssh as root, ~/.local/state/devenv/ssh otherwise), under a hash of the URL
    (short: a unix socket's path has ~100 bytes)."""
    from devenv.registry import registry_dir

    return Paths(registry_dir().parent / "ssh" / hashlib.sha256(url.encode()).hexdigest()[:12])


# ---- the master ---------------------------------------------------------------------------------


def api_socket(url: str, env: Mapping[str, str]) -> Path:
    """The local unix socket the engine's API answers on: a live master's, or a master started
    (again) now, with the API socket and every recorded stack's ports forwarded."""
    where = paths(url)
    _own(where)  # before anything goes through a socket there: ours alone, no link, 0700
    if _accepts(where.api):  # a live master: one connect(), no ssh process
        return where.api
    target = parse(url)
    with _locked(where):
        _ensure(target, env, where)
    return where.api


def _ensure(target: Target, env: Mapping[str, str], where: Paths) -> None:
    """A live master with the API socket and the recorded forwards (the lock held)."""
    if _accepts(where.api):
        return
    record = _read(where)
    if not _run(target, env, where, "-S", str(where.control), "-O", "check", check=False):
        _start(target, env, where)
        # A master only a listing or an `ls` needed ends with this command: the master stays
        # while some stack has ports forwarded through it (`up` records them before it exits).
        import atexit

        atexit.register(_close_unused, target, dict(env), where)
    try:
        remote = record.get("socket") or _ask_socket(target, env, where)
        with contextlib.suppress(FileNotFoundError):
            where.api.unlink()  # left by a master that died
        spec = f"{where.api}:{_remote_end(remote)}"
        _forward(target, env, where, spec, what="the engine's API socket")
        if record.get("socket") and not _pings(where.api):
            # The recorded socket may be stale (the remote's DOCKER_HOST moved): asked again, once.
            _run(target, env, where, *_mux(where), "-O", "cancel", "-L", spec, check=False)
            remote = _ask_socket(target, env, where)
            _forward(target, env, where, f"{where.api}:{_remote_end(remote)}", what="the engine's API socket")
    except DevenvError:
        if not record.get("forwards"):  # a master for nothing: not left holding a session open
            _close(target, env, where)
        raise
    if remote != record.get("socket"):
        record["socket"] = remote
        _write(where, record)
    for name, ports in record.get("forwards", {}).items():  # the stacks' ports, as they were
        for service, port in ports.items():
            if _run(target, env, where, *_mux(where), "-O", "forward", "-L", _spec(int(port)), check=False):
                continue
            # Taken while the master was down: never half a tunnel (a client of this stack would
            # give its password to whatever holds the port), so no master until it is free.
            taken = "port forwarding failed" in _text(where.log)
            line = _last_line(where.log)
            _close(target, env, where)
            if taken:  # not the registry's holder of that port: that is this very stack
                from devenv.errors import PortInUseError
                from devenv.runtime.ports import port_holder

                holder = port_holder(int(port))
                raise PortInUseError(
                    f"port {port} for {service} (stack {name}, forwarded from {target.host}) was taken"
                    f"{f' by {holder}' if holder else ' by another program'} while the SSH connection was down",
                    hint="stop that program: the next devenv command then forwards the port again (no session "
                         "goes to it meanwhile, as it would get the stack's password).")
            raise ssh_failed(target, "forward port", line)


def forward_ports(url: str, env: Mapping[str, str], stack: Stack) -> None:
    """Forward this machine's 127.0.0.1:P to the remote's 127.0.0.1:P for each of the stack's
    ports (a forward that exists already is kept); PortInUseError, as for any taken port, when
    one is held here by another program."""
    from devenv.runtime.ports import port_in_use

    target, where = parse(url), paths(url)
    wanted = {service.name: service.port for service in stack.services}
    with _locked(where):
        _ensure(target, env, where)  # a live master (another command may have just closed it)
        record = _read(where)
        before = record.setdefault("forwards", {}).get(stack.name, {})
        for service, port in wanted.items():
            if not _run(target, env, where, *_mux(where), "-O", "forward", "-L", _spec(port), check=False):
                if "port forwarding failed" not in _text(where.log):  # not the port: the master, the link
                    raise ssh_failed(target, "forward port", _last_line(where.log))
                for undo in set(wanted.values()) - set(before.values()):  # only what this call added
                    _run(target, env, where, *_mux(where), "-O", "cancel", "-L", _spec(int(undo)), check=False)
                raise port_in_use(service, port, "this machine's end of the SSH forward to "
                                  f"{target.host}", stack=stack)
        for port in set(before.values()) - set(wanted.values()):  # a port changed: its old forward goes
            _run(target, env, where, *_mux(where), "-O", "cancel", "-L", _spec(int(port)), check=False)
        record["forwards"][stack.name] = wanted
        _write(where, record)


def release(url: str, env: Mapping[str, str], stack_name: str) -> None:
    """After `down`: cancel the stack's forwards; the last stack's `down` closes the master."""
    where = paths(url)
    if not where.dir.exists():
        return
    target = parse(url)
    with _locked(where):
        record = _read(where)
        ports = record.get("forwards", {}).pop(stack_name, {})
        if ports:
            _write(where, record)
        if record.get("forwards"):
            for port in ports.values():
                _run(target, env, where, *_mux(where), "-O", "cancel", "-L", _spec(int(port)), check=False)
        else:
            _close(target, env, where)


def _close_unused(target: Target, env: Mapping[str, str], where: Paths) -> None:
    """At exit: close the master this command started when no stack has forwards through it."""
    with contextlib.suppress(Exception), _locked(where):
        if not _read(where).get("forwards"):
            _close(target, env, where)


def _close(target: Target, env: Mapping[str, str], where: Paths) -> None:
    """End the master (if it lives) and remove its sockets."""
    if where.control.exists():
        _run(target, env, where, "-S", str(where.control), "-O", "exit", check=False)
    for path in (where.api, where.control):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def master_pid(url: str, env: Mapping[str, str]) -> int | None:
    """The live master's pid (`ssh -O check` says), None without one."""
    import re

    where = paths(url)
    if not where.control.exists():
        return None
    target = parse(url)
    argv = target.cmd(env, "-S", str(where.control), "-O", "check")
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                          check=False)
    match = re.search(r"pid=(\d+)", done.stderr)
    return int(match.group(1)) if done.returncode == 0 and match else None


def master_options(control: Path) -> tuple[str, ...]:
    """The master's options: no command, in the background once authenticated, none of the
    forwards of the user's config (ours are added through it), keepalives so a dead link ends it."""
    return ("-M", "-S", str(control), "-fN", "-o", "ControlPersist=no", "-o", "ExitOnForwardFailure=yes",
            "-o", "ClearAllForwardings=yes", "-o", "StreamLocalBindUnlink=yes",
            "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3")


def _start(target: Target, env: Mapping[str, str], where: Paths) -> None:
    with contextlib.suppress(FileNotFoundError):
        where.control.unlink()  # a dead master's socket: ssh would not make its own beside it
    # Its own log: the master keeps stderr open in the background, and the next command's
    # log would be truncated under it.
    _run(target, env, where, *master_options(where.control), what="connect", log=where.dir / "master.log")


def _ask_socket(target: Target, env: Mapping[str, str], where: Paths) -> str:
    """The remote's engine address: its DOCKER_HOST (a unix socket that must exist, or tcp://),
    else the default socket; DependencyError when there is no socket there."""
    out = _run(target, env, where, *_mux(where), "-T", "-o", "RemoteCommand=none", ASK_SOCKET, what="ask",
               output=True, host_last=True)
    lines = [line.strip() for line in str(out).splitlines() if line.strip()]
    address = lines[0] if lines else DEFAULT_SOCKET
    if address.startswith("tcp://") or (address.startswith("unix://") and lines[1:2] == ["socket"]):
        return address
    raise DependencyError(
        f"no Docker engine socket at {address} on {target.host} (the engine DOCKER_HOST={target.url} names)",
        hint=f"start Docker on {target.host}, or, when its engine listens elsewhere, set DOCKER_HOST in the "
        "environment of your ssh sessions there (sshd's SetEnv or AcceptEnv) to its unix:// socket.")


def _remote_end(address: str) -> str:
    """The remote end of a forward to the engine: a socket path, or host:port of a tcp:// one."""
    if address.startswith("unix://"):
        return address[len("unix://"):]
    return address[len("tcp://"):].rstrip("/")


def _spec(port: int) -> str:
    """A stack port's forward: this machine's loopback to the remote's, same port."""
    return f"127.0.0.1:{port}:127.0.0.1:{port}"


def _mux(where: Paths) -> tuple[str, ...]:
    """Through the master only: never a connection of its own, whatever the user's config says."""
    return ("-S", str(where.control), "-o", "ControlMaster=no")


def _forward(target: Target, env: Mapping[str, str], where: Paths, spec: str, what: str) -> None:
    _run(target, env, where, *_mux(where), "-O", "forward", "-L", spec, what=f"forward {what}")


def _run(target: Target, env: Mapping[str, str], where: Paths, *options: str, check: bool = True,
         what: str = "", output: bool = False, host_last: bool = False, log: Path | None = None) -> bool | str:
    """Run ssh with `options` (a remote command after the host when `host_last`); its stderr
    goes to the log file, not a pipe (the master keeps it open in the background). True (or its
    stdout) on success; on failure False, or with `check` a DependencyError naming ssh's last line."""
    argv = target.argv(env)
    if host_last:  # options end with the remote command, after the host
        argv += [*options[:-1], "--", target.host, options[-1]]
    else:
        argv += [*options, "--", target.host]
    log = log or where.log
    with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "wb") as err:
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if output else subprocess.DEVNULL,
                                  stderr=err, timeout=COMMAND_TIMEOUT, check=False, start_new_session=True)
        except subprocess.TimeoutExpired:
            if not check:
                return False
            raise DependencyError(f"ssh to {target.host} (DOCKER_HOST={target.url}) did not finish within "
                                  f"{COMMAND_TIMEOUT:g}s", hint="check that the host answers: `ssh " + target.host + " true`.")
    if done.returncode == 0:
        return done.stdout.decode(errors="replace") if output else True
    if not check:
        return False
    raise ssh_failed(target, what, _last_line(log))


def _text(log: Path) -> str:
    try:
        return log.read_text(errors="replace").replace("\0", "").lower()
    except OSError:
        return ""


def _last_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").replace("\0", "").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def ssh_failed(target: Target, what: str, line: str) -> DependencyError:
    """The error for a failed ssh step: the host, ssh's own last line, and a hint for its cause."""
    lowered = line.lower()
    if "permission denied" in lowered or "too many authentication failures" in lowered:
        hint = (f"devenv's ssh never prompts (BatchMode): load your key into ssh-agent (`ssh-add`) or name it "
                f"(IdentityFile) in your ssh config for {target.host}; `ssh {target.host} true` must work without a prompt.")
    elif "host key verification failed" in lowered or "host key" in lowered:
        hint = (f"ssh does not know {target.host}'s host key yet (devenv never accepts one for you): connect "
                f"once with `ssh {target.host} true` and check the fingerprint.")
    elif "could not resolve" in lowered or "name or service not known" in lowered:
        hint = f"check the host name in DOCKER_HOST ({target.url}), or add a Host entry for it to your ssh config."
    else:
        hint = (f"check that `ssh {target.host} true` works without a prompt (devenv passes the file "
                f"{SSH_CONFIG} names as -F), or point DOCKER_HOST at the engine's tcp:// address.")
    step = {"connect": "cannot connect", "ask": "cannot ask for the engine's socket"}.get(what, f"cannot {what}")
    return DependencyError(f"ssh {step} to {target.host} (DOCKER_HOST={target.url}): {line or 'ssh failed'}", hint=hint)


# ---- the directory, its lock and its record -----------------------------------------------------


def _pings(path: Path) -> bool:
    """Whether the engine answers /_ping through the forwarded API socket (the forward itself is
    made without reaching the remote socket: a stale one shows only here)."""
    from devenv.runtime.engine import unix_http_get

    try:
        status, _, _ = unix_http_get(str(path), "/_ping", timeout=5.0)
    except Exception:  # noqa: BLE001  (reset, timed out, not HTTP: no engine there)
        return False
    return status == 200


def _accepts(path: Path) -> bool:
    """Whether a unix socket accepts a connection (a live master's forward)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(1.0)
    try:
        sock.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def _own(where: Paths) -> None:
    """The engine's directory and its parent: made if missing, else proven this user's own real
    directories (StateError otherwise: a socket another user planted there would see the API's
    requests, passwords of `docker exec` included)."""
    from devenv.safefs import private_dir

    private_dir(where.dir.parent)
    private_dir(where.dir)


@contextlib.contextmanager
def _locked(where: Paths) -> Iterator[None]:
    """The engine's directory, private, locked against another devenv starting a second master."""
    from devenv.safefs import flock_within

    _own(where)
    fd = os.open(where.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        if not flock_within(fd, LOCK_TIMEOUT, poll=0.05):
            raise StateError(f"another devenv holds {where.dir / 'lock'} (starting the SSH connection) for over "
                             f"{LOCK_TIMEOUT:g}s", hint="wait for it, or end that devenv and run the command again.")
        yield
    finally:
        os.close(fd)


def _read(where: Paths) -> dict:  # type: ignore[type-arg]
    """tunnel.json, with only what has the right shape (a damaged record's rest is dropped: its
    forwards are then made again by the next `up` of their stacks)."""
    try:
        record = json.loads(where.record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict):
        return {}
    forwards = record.get("forwards")
    return {
        **({"socket": record["socket"]} if isinstance(record.get("socket"), str)
           and record["socket"].startswith(("unix:///", "tcp://")) else {}),
        "forwards": {str(name): ports for name, ports in (forwards.items() if isinstance(forwards, dict) else ())
                     if isinstance(ports, dict) and all(type(p) is int and 0 < p < 65536 for p in ports.values())},
    }


def _write(where: Paths, record: dict) -> None:  # type: ignore[type-arg]
    from devenv.safefs import write_file

    write_file(where.record, json.dumps(record, indent=2, sort_keys=True).encode())
