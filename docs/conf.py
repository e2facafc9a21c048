"""Sphinx configuration for the netsvc user documentation.

Built in CI with ``sphinx-build -W`` (warnings are errors), built-in extensions only.
"""

import os
import sys

# Document the checkout, not whatever netsvc happens to be installed.
sys.path.insert(0, os.path.abspath(".."))

from netsvc import __version__

project = "netsvc"
author = "the netsvc contributors"
copyright = "the netsvc contributors"
version = release = __version__

extensions = ["sphinx.ext.autodoc"]

exclude_patterns = ["_build", "examples"]
html_theme = "alabaster"

autodoc_member_order = "bysource"
# Show defaults as written (``EchoLimits()``), not as long reprs of the objects.
autodoc_preserve_defaults = True
# zope.interface classes would otherwise print as "<InterfaceClass ...>" in signatures.
autodoc_type_aliases = {
    name: f"twisted.internet.interfaces.{name}"
    for name in ("IProtocolFactory", "IReactorCore", "IReactorTime", "IReactorUDP")
}
