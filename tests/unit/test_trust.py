"""Pure logic of the trust boundaries: the servers' environment, root's deletions, restore errors."""

from __future__ import annotations

import os
from pathlib import Path

from devenv.clients.pgwire import scram_salt_of, scram_secret
from devenv.db.dumps import only_event_triggers_refused
from devenv.runtime.serverenv import SYSTEM_PATH, server_env
from devenv.runtime.trust import remove_within


def test_server_env_keeps_locale_and_tz_and_nothing_else() -> None:
    caller = {"PATH": "/home/me/bin:/usr/bin", "AWS_SECRET_ACCESS_KEY": "s", "GITHUB_TOKEN": "t", "PGDATA": "/x",
              "LANG": "de_DE.UTF-8", "LC_MESSAGES": "C", "TZ": "Europe/Berlin", "HOME": "/root", "PYTHONPATH": "/p"}
    env = server_env("/var/lib/postgresql", caller)
    assert env == {"PATH": SYSTEM_PATH, "HOME": "/var/lib/postgresql", "LANG": "de_DE.UTF-8", "LC_MESSAGES": "C",
                   "TZ": "Europe/Berlin", "LC_ALL": "C"}
    assert server_env("/h", {"LC_ALL": "en_US.UTF-8"})["LC_ALL"] == "en_US.UTF-8"


def test_remove_within_refuses_paths_outside_and_never_follows_links(tmp_path: Path) -> None:
    root, outside = tmp_path / "base", tmp_path / "outside"
    (root / "data").mkdir(parents=True)
    outside.mkdir()
    (outside / "precious").write_text("x")
    assert not remove_within(outside, [root])
    (root / "escape").symlink_to(outside)
    assert not remove_within(root / "escape" / "precious", [root])  # resolved, it is outside
    assert remove_within(root / "escape", [root])  # the link itself goes
    assert (outside / "precious").exists() and not os.path.lexists(root / "escape")
    assert remove_within(root, [root]) and not root.exists()


def test_a_restore_may_pass_only_refused_event_triggers() -> None:
    refused = ('pg_restore: error: could not execute query: ERROR:  permission denied to create event trigger "devenv_ddl_end"\n'
               "HINT:  Must be superuser to create an event trigger.\n"
               "Command was: CREATE EVENT TRIGGER devenv_ddl_end ON ddl_command_end\n"
               "   EXECUTE FUNCTION devenv.count_ddl();\n"
               "pg_restore: warning: errors ignored on restore: 1\n")
    assert only_event_triggers_refused(refused)
    other = refused + ('pg_restore: error: could not execute query: ERROR:  relation "x" already exists\n'
                       "Command was: CREATE TABLE x (id int);\n")
    assert not only_event_triggers_refused(other)
    assert not only_event_triggers_refused("pg_restore: error: could not read from input file: end of file\n")


def test_scram_salt_of_a_secret_is_what_the_server_sends() -> None:
    secret = scram_secret("taskflow", "pw")
    iterations, salt = scram_salt_of(secret).split(":")
    assert iterations == "4096" and salt == secret.split("$")[1].split(":")[1]
    assert scram_salt_of("md5abc") == ""


def test_the_role_layout_is_part_of_the_cache_key_and_the_app_role_is_not_the_admin(project: Path) -> None:
    """An older devenv's archive (its application role the superuser) is never restored into
    this layout: the key names the roles; and devenv.yaml cannot name the admin role as the application's."""
    import pytest

    from devenv.config.resolve import build_stack
    from devenv.config.settings import load_config
    from devenv.db import cache
    from devenv.errors import ConfigError

    stack = build_stack(load_config(project / "devenv.yaml", {}), "dev")
    key = cache.data_key(stack, "15.8", ["-U", "devenv_admin"])
    other = stack.replace(postgres=stack.postgres.replace(admin_user="someone_else"))
    assert cache.data_key(other, "15.8", ["-U", "devenv_admin"]) != key
    config = project / "devenv.yaml"
    config.write_text(config.read_text().replace("  user: taskflow", "  user: devenv_admin", 1))
    with pytest.raises(ConfigError, match="keeps for itself"):
        build_stack(load_config(config, {}), "dev")
