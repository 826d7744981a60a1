"""The ``mpsearch`` command line: one module per subcommand.

Errors a user can act on (:class:`mpsearch.errors.MpsearchError`) print as one
line and exit with status 1; ``--debug`` shows the traceback instead. Plugins
add subcommands through the ``register_commands`` hook.
"""

from __future__ import annotations

import sys

import click

from mpsearch.errors import MpsearchError


class State:
    """What the group's options decide, shared with every subcommand."""

    def __init__(self, plugins: tuple[str, ...], debug: bool):
        self.plugins, self.debug = plugins, debug
        self._host = None

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
        if command is None and not ctx.resilient_parsing:
            command = self._plugin_commands(ctx).get(cmd_name)
        return command

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = super().list_commands(ctx)
        try:
            names += sorted(self._plugin_commands(ctx))
        except click.ClickException:
            pass  # the error shows when a command runs; help still lists the built-ins
        return names

    def invoke(self, ctx: click.Context):
        return _guard(ctx, lambda: super(PluginGroup, self).invoke(ctx))


def _guard(ctx: click.Context, fn):
    try:
        return fn()
    except MpsearchError as exc:
        if ctx.params.get("debug"):
            raise
        raise click.ClickException(str(exc)) from None


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
    from mpsearch.cli import cost, plugins_cmd, sensitivity, study

    cli.add_command(plugins_cmd.plugins)
    cli.add_command(cost.cost)
    cli.add_command(study.study)
    cli.add_command(sensitivity.sensitivity)


_register_builtin_commands()


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="mpsearch")
