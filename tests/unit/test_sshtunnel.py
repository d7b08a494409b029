"""devenv.runtime.sshtunnel's pure logic: ssh:// URLs, ssh's command lines, where the sockets
live, and the errors for ssh's failures (the real master: tests/integration/test_ssh_engine.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devenv.errors import ConfigError, DependencyError
from devenv.runtime import sshtunnel
from devenv.runtime.sshtunnel import Target, master_options, parse, paths, ssh_failed


def test_ssh_urls_are_taken_apart_for_ssh_s_own_options() -> None:
    assert parse("ssh://devbox") == Target("ssh://devbox", "devbox")
    assert parse("ssh://me@devbox:2222") == Target("ssh://me@devbox:2222", "devbox", "me", 2222)
    assert parse("ssh://me@10.0.0.5/").host == "10.0.0.5"


@pytest.mark.parametrize("url, words", [
    ("ssh://me:hunter2@devbox", "password"),
    ("ssh://devbox/var/run/docker.sock", "path"),
    ("ssh://devbox:99999", "port"),
    ("ssh://-oProxyCommand=x", "'-'"),
    ("tcp://devbox:2375", "ssh://"),
])
def test_what_ssh_could_not_be_given_safely_is_a_config_error(url: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(url)
    assert words in caught.value.message and caught.value.hint
    assert "hunter2" not in caught.value.message + caught.value.hint  # a password is never echoed


def test_ssh_never_prompts_and_gets_the_config_file_port_and_user(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "DEVENV_SSH_CONFIG": "/etc/lane/config"}
    argv = parse("ssh://me@devbox:2222").cmd(env, "-O", "check")
    assert argv[0].endswith("/ssh") and argv[1:3] == ["-F", "/etc/lane/config"]
    assert "BatchMode=yes" in argv and argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "me"
    assert argv[-4:] == ["-O", "check", "--", "devbox"]  # the host last, after `--`
    plain = parse("ssh://devbox").cmd({"PATH": os.environ["PATH"]})
    assert "-F" not in plain and "-p" not in plain and "-l" not in plain


def test_the_master_runs_in_the_background_with_keepalives_and_none_of_the_configs_forwards() -> None:
    options = master_options(Path("/x/ctl"))
    assert options[:4] == ("-M", "-S", "/x/ctl", "-fN")
    for option in ("ExitOnForwardFailure=yes", "ClearAllForwardings=yes", "StreamLocalBindUnlink=yes",
                   "ServerAliveInterval=15"):
        assert option in options


def test_a_stack_port_forwards_loopback_to_the_remote_loopback_on_the_same_port() -> None:
    assert sshtunnel._spec(5432) == "127.0.0.1:5432:127.0.0.1:5432"
    assert sshtunnel._remote_end("unix:///var/run/docker.sock") == "/var/run/docker.sock"
    assert sshtunnel._remote_end("tcp://127.0.0.1:2375") == "127.0.0.1:2375"


def test_no_ssh_client_is_a_dependency_error(tmp_path: Path) -> None:
    with pytest.raises(DependencyError) as caught:
        parse("ssh://devbox").argv({"PATH": str(tmp_path)})
    assert caught.value.exit_code == 4 and "ssh://devbox" in caught.value.message
    assert "openssh-client" in caught.value.hint


def test_the_sockets_live_beside_the_registry_keyed_by_the_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEVENV_REGISTRY_DIR", str(tmp_path / "stacks"))
    one, other = paths("ssh://devbox"), paths("ssh://me@devbox")
    assert one.dir.parent == tmp_path / "ssh" and one.dir != other.dir
    assert len(str(paths("ssh://devbox").api)) < 100  # a unix socket's path has ~108 bytes


@pytest.mark.parametrize("line, hint", [
    ("root@10.0.0.5: Permission denied (publickey).", "ssh-agent"),
    ("Host key verification failed.", "host key"),
    ("ssh: Could not resolve hostname devbox: Name or service not known", "host name"),
    ("ssh: connect to host devbox port 22: Connection refused", "without a prompt"),
])
def test_ssh_failures_name_the_host_ssh_s_line_and_a_hint_for_the_cause(line: str, hint: str) -> None:
    error = ssh_failed(parse("ssh://me@devbox"), "connect", line)
    assert error.exit_code == 4
    assert "devbox" in error.message and line in error.message and hint in error.hint


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_a_directory_another_user_planted_is_refused_before_its_socket_is_used(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Another user who made the engine's directory first (its parent beside a registry in a
    shared place) and put a socket in it would see the API's requests: refused before any connect."""
    import pwd
    import socket

    from devenv.errors import StateError

    monkeypatch.setenv("DEVENV_REGISTRY_DIR", str(tmp_path / "reg"))
    where = sshtunnel.paths("ssh://devbox")
    where.dir.mkdir(parents=True)
    nobody = pwd.getpwnam("nobody")
    os.chown(where.dir, nobody.pw_uid, nobody.pw_gid)
    planted = socket.socket(socket.AF_UNIX)
    planted.bind(str(where.api))
    planted.listen()
    planted.setblocking(False)
    try:
        with pytest.raises(StateError, match="refusing to use"):
            sshtunnel.api_socket("ssh://devbox", {})
        with pytest.raises(BlockingIOError):
            planted.accept()  # nobody connected to it
    finally:
        planted.close()


def test_a_damaged_tunnel_record_keeps_only_what_has_the_right_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVENV_REGISTRY_DIR", str(tmp_path / "reg"))
    where = sshtunnel.paths("ssh://devbox")
    where.dir.mkdir(parents=True)
    where.record.write_text('{"socket": "/etc/passwd", "forwards": {"a": {"postgres": "abc"}, "b": [1], '
                            '"c": {"redis": 6380}, "d": {"redis": 70000}}}')
    assert sshtunnel._read(where) == {"forwards": {"c": {"redis": 6380}}}
    where.record.write_text('["x"]')
    assert sshtunnel._read(where) == {}
