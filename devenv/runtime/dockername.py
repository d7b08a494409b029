"""A Docker stack's name per checkout, decided once (devenv.config.identity keeps it), and the
refusal of a Compose project that another checkout runs.

Names carry the checkout id, `{project}-{profile}-{id}`, so two checkouts of one repository
never share containers, networks or volumes. A checkout that already had a Docker stack named
`{project}-{profile}` (before names carried the id) keeps that name, so its data stays its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from devenv.errors import StateError
from devenv.runtime.compose import COMPOSE_PROJECT, COMPOSE_WORKING_DIR, ContainerSpec

if TYPE_CHECKING:
    from docker.models.containers import Container

    from devenv.config.stack import Stack


def decide_name(client: Any, stack: Stack) -> str:
    """The name this checkout's stack takes on Docker, when it has none recorded.

    `{project}-{profile}` (the legacy name) when its containers are this checkout's (their
    Compose working directory), or when none exist but its data volume does and this checkout
    made it (its password note in `.devenv/<profile>/`, devenv.runtime.plan.password_note_path)
    and no other checkout's registry record took the name; else `{project}-{profile}-{id}`.
    """
    from devenv import registry
    from devenv.config.identity import VOLUME_PASSWORD_NOTE, own_name

    legacy, own = stack.base_name, own_name(stack.project, stack.profile, stack.root)
    label = {"label": f"{COMPOSE_PROJECT}={legacy}"}
    here = {str(stack.state_dir.absolute()), str(stack.state_dir.resolve())}
    containers = client.containers.list(all=True, filters=label)
    if containers:
        return legacy if any(c.labels.get(COMPOSE_WORKING_DIR) in here for c in containers) else own
    if not (stack.state_dir / VOLUME_PASSWORD_NOTE).exists():
        return own
    if not any(v.name == f"{legacy}-pgdata" for v in client.volumes.list(filters=label)):
        return own
    own_key = f"{registry.checkout_id(stack.root)}-{stack.profile}"
    taken = any(e.name == legacy and e.key != own_key and not e.orphaned for e in registry.entries())
    return own if taken else legacy


def refuse_foreign(stack: Stack, containers: list[Any], out_dir: Path) -> None:
    """StateError when a running container of the stack's Compose project is another checkout's
    (its Compose working directory is `<checkout>/.devenv/<profile>`): one name, two checkouts."""
    for container in containers:
        working_dir = container.labels.get(COMPOSE_WORKING_DIR)
        if container.status == "running" and working_dir and working_dir != str(out_dir):
            other = Path(working_dir).parent.parent  # <checkout>/.devenv/<profile>
            raise StateError(
                f"the Docker stack {stack.name} is already running from the checkout {other} ({container.name}), "
                "and this checkout's record gives it the same name",
                hint=f"stop it there (`devenv down` in {other}), or remove this checkout's "
                f"{stack.state_dir / 'identity.json'} so that it takes a name of its own at the next `devenv up`.",
            )


def published_port(container: Any, container_port: int) -> int | None:
    """The host port a container publishes `container_port` on (as it was created), if any."""
    bindings = (container.attrs.get("HostConfig") or {}).get("PortBindings") or {}
    for bind in bindings.get(f"{container_port}/tcp") or []:
        port = str(bind.get("HostPort") or "")
        if port.isdigit():
            return int(port)
    return None


def holds_ports(container: Container, spec: ContainerSpec) -> bool:
    """Whether a running container already publishes the ports its replacement wants."""
    if container.status != "running":
        return False
    have = container.attrs.get("HostConfig", {}).get("PortBindings") or {}
    return have == spec.body.get("HostConfig", {}).get("PortBindings")


__all__ = ["decide_name", "holds_ports", "published_port", "refuse_foreign"]
