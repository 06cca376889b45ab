"""``forwardguard serve``: the HTTP immunization API (see :mod:`forwardguard.serve`).

The options are made from :class:`forwardguard.serve.settings.ServeSettings`, one per field with the
field's description as its help (:func:`settings_command`), so that a setting is declared once. That
class needs the ``serve`` extra, so the options are made when the command runs: typer hands ``serve``
its arguments unparsed (``--help`` too, see ``PASS_THROUGH``) and the command made from the settings
parses them; without the extra, ``serve`` says so in one line.

Every option can also come from a ``FORWARDGUARD_SERVE_<NAME>`` variable (``--model`` from
``FORWARDGUARD_SERVE_MODELS`` as a JSON list), and ``--registry`` from ``FORWARDGUARD_REGISTRY`` as
for every registry command. FastAPI, uvicorn and torch are imported inside the command.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, get_args, get_origin

import typer

from forwardguard.cli.common import user_errors

if TYPE_CHECKING:
    from pydantic import BaseModel
    from pydantic.fields import FieldInfo

PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}
"""How ``serve`` is registered with typer: every argument goes to the command made from the settings."""

ENVVARS = {"registry": "FORWARDGUARD_REGISTRY"}
"""Variables an option reads besides the settings' own ``FORWARDGUARD_SERVE_<NAME>``."""


def serve_command(ctx: typer.Context) -> None:
    """Serve the immunization API: POST /v1/immunize, POST /v1/lookup, GET /v1/patterns/{id}, /healthz, /metrics."""
    with user_errors():
        from forwardguard.serve.settings import ServeSettings

        app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
        app.command()(settings_command(ServeSettings, _serve, doc=serve_command.__doc__ or ""))
        command = typer.main.get_command(app)
        with command.make_context(ctx.info_name, list(ctx.args), parent=ctx.parent) as serve_ctx:
            command.invoke(serve_ctx)


def settings_command(settings: type[BaseModel], run: Callable[[dict[str, Any]], None], *, doc: str) -> Callable[..., None]:
    """A typer command with one option per field of ``settings`` that calls ``run(given)`` with the
    options given (by field name).

    Options are named by :func:`forwardguard.serve.settings.option_name` and default to None (not
    given), so that the settings' own variables and defaults apply; the help shows the field's
    default. A list field is a repeated option; a float field is read as text, for ``run`` to parse
    with :func:`forwardguard.numbers.parse_number`, which takes fractions (``32/255``).
    """
    from forwardguard.serve.settings import option_name

    parameters = []
    for name, field in settings.model_fields.items():
        annotation = _without_none(field.annotation)
        if annotation not in (str, int, float, list[str]):
            raise TypeError(f"setting {name}: no command-line form for {annotation}")
        option = typer.Option(option_name(name), envvar=ENVVARS.get(name), help=_help(field), show_default=False)
        cli_type = str if annotation is float else annotation
        parameters.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[cli_type | None, option])
        )

    def command(**given: Any) -> None:
        run({name: value for name, value in given.items() if value not in (None, [], ())})

    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    command.__doc__ = doc
    return command


def _help(field: FieldInfo) -> str:
    """The field's description, then "Required." or its default."""
    if field.is_required():
        return f"{field.description} Required."
    if field.default is None:
        return field.description or ""
    default = f"{field.default:g}" if isinstance(field.default, float) else field.default
    return f"{field.description} (default {default})"


def _without_none(annotation: Any) -> Any:
    """``int`` for ``int | None``; any other annotation as it is."""
    arguments = [argument for argument in get_args(annotation) if argument is not type(None)]
    return arguments[0] if get_origin(annotation) is not list and len(arguments) == 1 else annotation


def _serve(given: dict[str, Any]) -> None:
    """Parse the float options, then run the server with the settings."""
    from forwardguard.numbers import parse_number
    from forwardguard.serve import run
    from forwardguard.serve.settings import ServeSettings, load_settings, option_name

    for name, value in given.items():
        if _without_none(ServeSettings.model_fields[name].annotation) is float:
            given[name] = parse_number(value, what=option_name(name))
    run(load_settings(**given))
