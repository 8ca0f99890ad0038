"""griffe extension for the API reference: docstrings name objects the Sphinx way
(``:class:`ContextClampWarning```); the reference shows them as code (`ContextClampWarning`)
instead of printing the role."""

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|mod|func|meth|attr|data|obj|exc):`~?([^`]+)`")


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(r"``\1``", obj.docstring.value)
