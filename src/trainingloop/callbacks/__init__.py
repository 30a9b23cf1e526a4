"""Callbacks that ship with trainingloop, one module each."""

from trainingloop.callbacks.base import Callback, resolve_handlers

__all__ = ["Callback", "resolve_handlers"]
