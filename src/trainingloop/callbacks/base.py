"""The :class:`Callback` base class, the once-per-fit resolution of handlers, and firing.

A callback is any callable ``callback(loop, event)``. :class:`Callback` is sugar over that:
a subclass defines ``on_<event>(self, loop)`` methods for the events it wants. The loop makes
one :class:`Dispatcher` per ``fit``, which calls :func:`resolve_handlers` once, so that firing
an event is a walk over a prepared list, with no attribute look-ups in the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from trainingloop import _compat, devices
from trainingloop.events import Event, LoopControl, ends_within

if TYPE_CHECKING:
    from trainingloop.loop import TrainingLoop

__all__ = ["Callback", "Dispatcher", "Handler", "describe_handlers", "resolve_handlers"]

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


def describe_handlers(callbacks: Iterable[Any]) -> str:
    """Each event, in the order it fires and indented by its depth in the nest, with the
    callbacks that listen to it (fastai's ``show_training_loop``)."""
    handlers = resolve_handlers(callbacks)
    width = max(len(event.name) + 2 * event.depth for event in Event)
    lines = []
    for event in Event:
        names = ", ".join(label.rsplit(".<locals>.", 1)[-1]  # a function's own name
                          for label, _ in handlers[event]) or "-"
        lines.append(f"{'  ' * event.depth + event.name:<{width}}  {names}")
    return "\n".join(lines)


class Dispatcher:
    """Fires the events of one fit to its callbacks' handlers, with ``loop`` as the argument.

    A ``Cancel*`` from a handler that ends within the event (:func:`~trainingloop.events.
    ends_within`) ends only that event's remaining handlers; any other propagates. Actions
    queued with :meth:`defer` run once the event's handlers have, even when one cancelled. Any
    other error gets a note naming the callback and the event (a host sync caught by
    ``sync_debug`` becomes a :class:`~trainingloop.devices.HostSyncError` naming them).
    """

    def __init__(self, loop: TrainingLoop, callbacks: Iterable[Any] = ()) -> None:
        self.loop = loop
        self.handlers = resolve_handlers(callbacks)
        self.deferred: list[Callable[[], None]] = []

    def defer(self, action: Callable[[], None]) -> None:
        """Run ``action`` once every handler of the event being fired has run."""
        self.deferred.append(action)

    def fire(self, event: Event) -> None:
        """Call each handler of ``event``, then the deferred actions."""
        label = ""
        try:
            try:
                for label, handler in self.handlers[event]:  # noqa: B007 - names the culprit
                    handler(self.loop)
            except LoopControl as control:
                if not ends_within(control, event):
                    raise
            finally:  # what the event's handlers asked for runs even when one cancelled
                while self.deferred:
                    action = self.deferred.pop(0)
                    label = f"{getattr(action, '__qualname__', 'an action')} (deferred)"
                    action()
        except LoopControl:
            raise
        except Exception as error:
            devices.raise_if_host_sync(error, event.name, f"callback {label}")
            _compat.add_note(error, f"raised by callback {label} at {event.name}")
            raise
