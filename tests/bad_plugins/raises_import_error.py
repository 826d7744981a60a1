"""A plugin file that cannot be imported: it needs a module nobody has (tests only)."""

import mpsearch_no_such_dependency  # noqa: F401
