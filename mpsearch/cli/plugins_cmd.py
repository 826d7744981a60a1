"""``mpsearch plugins``: what is registered, and by which plugin."""

from __future__ import annotations

import json

import click

KINDS = ("strategies", "objectives", "backends", "models", "datasets")


@click.group()
def plugins() -> None:
    """Inspect registered plugins."""


@plugins.command("list")
@click.option("--kind", type=click.Choice(KINDS), help="Only this kind of plugin.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def list_plugins(state, kind: str | None, as_json: bool) -> None:
    """Every registered strategy, objective, backend, model and dataset."""
    host = state.host
    rows = []
    for k in (kind,) if kind else KINDS:
        for entry in getattr(host, k).entries():
            rows.append({"kind": k[:-1] if k != "strategies" else "strategy", "name": entry.name,
                         "plugin": entry.plugin, "description": entry.description})
    if as_json:
        click.echo(json.dumps({"plugins": host.plugin_names(), "registered": rows}, indent=1))
        return
    for k in (kind,) if kind else KINDS:
        entries = getattr(host, k).entries()
        click.echo(click.style(f"{k} ({len(entries)})", bold=True))
        if not entries:
            click.echo("  (none)")
        width = max((len(e.name) for e in entries), default=0)
        pwidth = max((len(e.plugin) for e in entries), default=0)
        for e in entries:
            desc = f"  {e.description}" if e.description else ""
            click.echo(f"  {e.name:<{width}}  {e.plugin:<{pwidth}}{desc}".rstrip())
