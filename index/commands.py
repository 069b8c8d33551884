"""``faec-rec people faces NAME`` and ``faec-rec people remove-face TEMPLATE``.

Added to the ``people`` group by ``faec_rec.cli._register_plugins``; thin: parse, call
the :class:`~faec_rec.client.Client`, print.
"""
from __future__ import annotations

import click


def add_people_commands(group: click.Group) -> None:
    """Add the template commands to the CLI's ``people`` group."""
    from faec_rec.cli import State, _backend, _client, _echo_json, pass_state

    if "faces" in group.commands:
        return

    @group.command("faces")
    @click.argument("person")
    @click.option("--json", "as_json", is_flag=True, help="print JSON.")
    @pass_state
    def people_faces(state: State, person: str, as_json: bool) -> None:
        """The templates of PERSON (id or name): template id, source photo, quality."""
        with _backend(state) as backend:
            faces = _client(backend).person_faces(person)
        if as_json:
            _echo_json(faces)
            return
        for face in faces:
            quality = "" if face["quality"] is None else f"  quality {face['quality']:.2f}"
            click.echo(f"{face['id']}  {face['source']}{quality}")
        click.echo(f"{len(faces)} template(s)")

    @group.command("remove-face")
    @click.argument("template_id")
    @click.option("--yes", is_flag=True, help="do not ask for confirmation.")
    @pass_state
    def people_remove_face(state: State, template_id: str, yes: bool) -> None:
        """Delete one template (a photo enrolled by mistake) by its id (see `people faces`)."""
        if not yes:
            click.confirm(f"remove template {template_id}?", abort=True)
        with _backend(state) as backend:
            person = _client(backend).remove_face(template_id)
        click.echo(f"removed {template_id} from {person}")
