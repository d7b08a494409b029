"""`devenv status`, without click: the click command (devenv.cli.main) and the fast path
(devenv.cli.entry) both run `status_command`, so that both print the same.

`status` is typed often and scripted (`--json`), and click's import (with inspect and uuid)
cost as much as the servers' answers; the plain forms are read by devenv.cli.entry.
"""

from __future__ import annotations

import json
from typing import Callable


def status_command(profile: str, config_path: str | None, runtime: str, as_json: bool,
                   echo: Callable[[str], object] = print) -> int:
    """Print each service's state, health and port, the monitoring view and the steps (or all of
    it as JSON); the exit status: 1 when a service is not healthy, else 0."""
    from devenv import status as status_view
    from devenv.cli.output import load_stack
    from devenv.runtime import get_runtime

    stack = load_stack(config_path, profile)
    report = status_view.report(stack, get_runtime(runtime))
    rows = report["services"]
    if as_json:
        echo(json.dumps({"profile": profile, **report}, indent=2))
    else:
        for row in rows:
            extra = f"  ({row['problem']})" if row["problem"] else ""
            echo(f"{row['service']:<10} {row['state']:<12} {row['health']:<10} {stack.host}:{row['port']}{extra}")
        for line in status_view.format_report(report):  # the monitoring view, then the steps
            echo(line)
    return 1 if any(row["health"] != "healthy" for row in rows) else 0
