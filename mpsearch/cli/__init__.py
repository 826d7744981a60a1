"""The ``mpsearch`` command line: one module per subcommand.

Errors a user can act on (:class:`mpsearch.errors.MpsearchError`, a usage
mistake such as an unknown option, a database that cannot be written, a file that
cannot be written) print as one line and exit with status 1; ``--debug`` shows the
traceback instead. Plugins add subcommands through the ``register_commands`` hook.
"""

from __future__ import annotations

import sys

import click

from mpsearch.errors import MpsearchError


class State:
    """What the group's options decide, shared with every subcommand."""

    def __init__(self, plugins: tuple[str, ...], debug: bool):
        self.plugins, self.debug = plugins, debug
        self.secrets: set[str] = set()  # storage passwords: never in a message
        self._host = None

    def storage(self, url: str) -> str:
        """Note a storage URL's password, so that no message shows it; return the URL."""
        from mpsearch.storage import password_of

        secret = password_of(url)
        if secret:
            self.secrets.add(secret)
        return url

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    @property
    def host(self):
        if self._host is None:
            from mpsearch.host import PluginHost

            self._host = PluginHost(self.plugins)
        return self._host


class PluginGroup(click.Group):
    """A group that lets plugins add commands once ``--plugin`` options are known.

    Plugin commands are kept per invocation (in the root context), never added to
    the module-level group, so one run's plugins cannot leak into the next.
    """

    def _plugin_commands(self, ctx: click.Context) -> dict[str, click.Command]:
        root = ctx.find_root()
        found = root.meta.get("mpsearch.plugin_commands")
        if found is None:
            scratch = click.Group(name=self.name, commands=dict(self.commands))
            _guard(root, lambda: _state(root).host.add_commands(scratch))
            found = {n: c for n, c in scratch.commands.items() if n not in self.commands}
            root.meta["mpsearch.plugin_commands"] = found
        return found

    def get_command(self, ctx: click.Context, cmd_name: str):
        command = super().get_command(ctx, cmd_name)
        if ctx.resilient_parsing:
            return command
        if command is None:
            command = self._plugin_commands(ctx).get(cmd_name)
        elif _plugins_may_add_commands(ctx):
            self._plugin_commands(ctx)  # a plugin command named like a built-in is an error
        return command

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = super().list_commands(ctx)
        try:
            names += sorted(self._plugin_commands(ctx))
        except click.ClickException:
            pass  # the error shows when a command runs; help still lists the built-ins
        return names

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:  # the group's own options
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context):
        return _guard(ctx, lambda: super(PluginGroup, self).invoke(ctx))


def _plugins_may_add_commands(ctx: click.Context) -> bool:
    """Whether loading plugins could add commands: ``--plugin`` given, or installed plugins."""
    if _state(ctx.find_root()).plugins:
        return True
    import importlib.metadata

    return bool(list(importlib.metadata.entry_points(group="mpsearch")))


def _one_line(exc: click.UsageError) -> click.ClickException:
    """A usage mistake as one line (exit 1), naming the command whose help to read."""
    path = exc.ctx.command_path if exc.ctx is not None else "mpsearch"
    message = " ".join(exc.format_message().split())
    return click.ClickException(f"{message} See '{path} --help'.")


def _guard(ctx: click.Context, fn):
    scrub = _state(ctx.find_root()).scrub
    try:
        return fn()
    except click.UsageError as exc:
        if ctx.params.get("debug"):
            raise
        raise _one_line(exc) from None
    except MpsearchError as exc:
        if ctx.params.get("debug"):
            raise
        raise click.ClickException(scrub(str(exc))) from None
    except OSError as exc:  # a file or folder that cannot be used: full disk, permissions
        if ctx.params.get("debug"):
            raise
        where = f" {str(exc.filename)!r}" if exc.filename else ""
        raise click.ClickException(scrub(f"cannot use{where}: {exc.strerror or exc}.")) from None
    except Exception as exc:
        message = _storage_error(exc)
        if message is None or ctx.params.get("debug"):
            raise
        raise click.ClickException(scrub(message)) from None


def _storage_error(exc: BaseException) -> str | None:
    if "sqlalchemy" not in sys.modules:  # nothing opened a database
        return None
    from mpsearch.storage import storage_error

    return storage_error(exc)


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE_OR_PATH",
              help="Load a plugin module (dotted name or .py file) for this run. Repeatable.")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="mpsearch")
@click.pass_context
def cli(ctx: click.Context, plugins: tuple[str, ...], debug: bool) -> None:
    """Search mixed-precision quantization of neural networks."""
    state = _state(ctx)
    if plugins and not ctx.resilient_parsing:
        state.host  # noqa: B018 - a --plugin that cannot load fails every command, not only some


def _state(ctx: click.Context) -> State:
    if ctx.obj is None:
        ctx.obj = State(tuple(ctx.params.get("plugins") or ()), bool(ctx.params.get("debug")))
    return ctx.obj


def _register_builtin_commands() -> None:
    from mpsearch.cli import cost, export, plugins_cmd, sensitivity, study

    cli.add_command(plugins_cmd.plugins)
    cli.add_command(cost.cost)
    cli.add_command(study.study)
    cli.add_command(export.export)
    cli.add_command(sensitivity.sensitivity)


_register_builtin_commands()


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="mpsearch")
