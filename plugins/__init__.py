"""mpsearch's built-in plugins, written exactly as a third party would write them.

Each module implements hooks from :mod:`mpsearch.hookspecs`; the host loads those
listed in :data:`mpsearch.host.DEFAULT_PLUGINS`.
"""
