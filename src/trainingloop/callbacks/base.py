"""The :class:`Callback` base class and the once-per-fit resolution of handlers.

A callback is any callable ``callback(loop, event)``. :class:`Callback` is sugar over that:
a subclass defines ``on_<event>(self, loop)`` methods for the events it wants. The loop calls
:func:`resolve_handlers` once per ``fit`` so that firing an event is a walk over a prepared
list, with no attribute look-ups in the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from trainingloop.events import Event

if TYPE_CHECKING:
    from trainingloop.loop import TrainingLoop

__all__ = ["Callback", "Handler", "resolve_handlers"]

Handler = Callable[["TrainingLoop"], None]
_METHODS = {event.method_name: event for event in Event}


class Callback:
    """Base class for callbacks with one method per event they handle.

    >>> class Announce(Callback):
    ...     def on_epoch_end(self, loop):
    ...         print("finished epoch", loop.epoch_index + 1)

    Subclasses may define ``state_dict()``/``load_state_dict(state)`` to be checkpointed.
    A method named like an event but misspelled (``on_epoch_ends``) is an error at ``fit``.
    """

    def __call__(self, loop: TrainingLoop, event: Event) -> None:
        method = getattr(self, event.method_name, None)
        if method is not None:
            method(loop)


def _label(callback: Any) -> str:
    return getattr(callback, "__qualname__", None) or type(callback).__name__


def resolve_handlers(callbacks: Iterable[Any]) -> dict[Event, list[tuple[str, Handler]]]:
    """Map each event to ``(label, handler)`` pairs that listen to it, in callback order.

    The label names the callback in errors raised by its handler.
    """
    handlers: dict[Event, list[tuple[str, Handler]]] = {event: [] for event in Event}
    for callback in callbacks:
        if isinstance(callback, Callback):
            names = {n for klass in type(callback).__mro__ for n in vars(klass)}
            unknown = sorted(n for n in names if n.startswith("on_") and n not in _METHODS)
            if unknown:
                raise TypeError(
                    f"callback {type(callback).__name__} defines {unknown}, which name no event; "
                    f"known methods: {sorted(_METHODS)}"
                )
            for name, event in _METHODS.items():
                method = getattr(callback, name, None)
                if method is not None:
                    handlers[event].append((type(callback).__name__, method))
        elif callable(callback):
            for event in Event:
                handlers[event].append((_label(callback), _bind_event(callback, event)))
        else:
            raise TypeError(f"callback {callback!r} is neither a Callback nor a callable")
    return handlers


def _bind_event(callback: Callable[[Any, Event], None], event: Event) -> Handler:
    return lambda loop: callback(loop, event)
