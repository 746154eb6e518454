"""Editing methods: the registry (:mod:`kedit.methods.registry`), the method contract, the edit
handle and sequential sessions."""

from kedit.methods.base import EditMethod
from kedit.methods.edit import Edit
from kedit.methods.registry import METHODS, display_name, make_method
from kedit.methods.session import EditSession

__all__ = ["METHODS", "Edit", "EditMethod", "EditSession", "display_name", "make_method"]
