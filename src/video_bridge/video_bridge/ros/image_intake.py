"""
The image intake: every stream's messages taken as CDR bytes, and encoded, on a thread of its own.

A stream's topic (Image, CompressedImage or foxglove CompressedVideo) is subscribed with
``raw=True`` (fields read by :mod:`video_bridge.core.cdr`) and served by a thread
(:class:`ImageIntake`) that waits on those subscriptions alone; the handler it calls converts
and encodes the frame (:meth:`video_bridge.core.streams.Stream.publish`) on this thread.

Why a thread of its own:

* rclpy's executor builds a wait set over every entity of the node (parameter services,
  timers, QoS event handlers) in Python for each message, and its Python message objects are
  built field by field (a raw image's data copied twice): together about 2 % of a core at
  30 messages/s here, most of what a passed-through stream costs.
* Video is the bridge's heaviest work, and the least urgent. On this thread it runs at a lower
  priority (``video_thread_nice``): when the CPU is short, the network loop (commands) and the
  executor (the e-stop service, parameters, timers) are served first, and video drops frames
  (each viewer takes the newest).
"""

from contextlib import ExitStack
import os
import threading

from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.exceptions import InvalidHandle
from rclpy.node import Node


class _IntakeGroup(ReentrantCallbackGroup):
    """
    The callback group of the intake's subscriptions, their QoS event handlers and its guard.

    rclpy's executor leaves out of its wait set what a group cannot execute, so the intake
    thread alone waits on these. The event handlers must go with their subscription: in
    rmw_fastrtps a subscription's events and its data wake the same waiters, so an executor
    waiting on the events alone would wake (and rebuild its wait set) for every message.
    """

    def can_execute(self, entity) -> bool:
        """Return False: the intake thread serves everything in this group."""
        return False

    def beginning_execution(self, entity) -> bool:
        """Return False, as :meth:`can_execute`."""
        return False


class ImageIntake:
    """
    Take the messages of some image subscriptions on one thread, as CDR bytes, and hand them on.

    Why: see the module docstring (rclpy's executor costs ~0.4 ms of Python per message). The
    thread waits on a wait set of these subscriptions and one guard condition (a change, or
    stop) and takes each ready message with ``raw=True``; ``handler(bytes)`` runs on this
    thread. A handler error is logged (once per kind of error) and the thread goes on.

    The subscriptions' QoS event handlers (rclpy's default ones log an incompatible QoS or
    type) are waited on and run here too (see :class:`_IntakeGroup`).

    This is the one place that reaches into rclpy below its public API (``_rclpy.WaitSet``,
    ``Subscription.handle.take_message``, the Waitable calls its executor makes on event
    handlers); :meth:`create` returns
    None when this rclpy lacks them, and the bridge then takes the same bytes through the
    executor (same handler, slower).
    """

    WAIT_NS = 1_000_000_000   # a bounded wait: the stop flag is looked at least once a second

    def __init__(self, node: Node, rclpy_impl, log, nice: int = 0):
        self._node = node
        self._nice = nice
        self._impl = rclpy_impl
        self._log = log
        self.group = _IntakeGroup()
        self._lock = threading.Lock()
        self._entries = {}        # name -> (subscription, handler)
        self._stopping = False
        self._errors = set()
        self.taken = 0
        self.failures = 0
        self._wake = node.create_guard_condition(lambda: None, callback_group=self.group)
        self._thread = threading.Thread(target=self._run, name='image-intake', daemon=True)

    @classmethod
    def create(cls, node: Node, log, nice: int = 0):
        """
        Return a started intake, or None when this rclpy has not the internals it uses.

        ``nice``: added to the thread's niceness (Linux; see :meth:`_lower_priority`).
        """
        try:
            from rclpy.impl.implementation_singleton import rclpy_implementation
            for name in ('WaitSet', 'Subscription', 'GuardCondition'):
                getattr(rclpy_implementation, name)
            wait_set = rclpy_implementation.WaitSet
            for name in ('clear_entities', 'add_subscription', 'add_guard_condition',
                         'add_event', 'wait', 'get_ready_entities', 'is_ready'):
                getattr(wait_set, name)
            getattr(rclpy_implementation.Subscription, 'take_message')
        except (ImportError, AttributeError) as exc:
            log.warning('image intake: this rclpy lacks %s; images go through the executor '
                        '(more CPU per frame)', exc)
            return None
        intake = cls(node, rclpy_implementation, log, nice)
        intake._thread.start()
        return intake

    def add(self, name: str, subscription, handler):
        """Serve ``subscription`` (made with ``callback_group=self.group, raw=True``)."""
        with self._lock:
            self._entries[name] = (subscription, handler)
        self._wake.trigger()

    def remove(self, name: str):
        """Stop serving a subscription (before the node destroys it: the thread lets go)."""
        with self._lock:
            self._entries.pop(name, None)
        self._wake.trigger()

    def stop(self, timeout: float = 2.0):
        """End the thread (before the node and the context go); bounded by ``timeout``."""
        self._stopping = True
        try:
            self._wake.trigger()
        except Exception:   # already destroyed with the node: the bounded wait ends it
            pass
        self._thread.join(timeout)

    def _lower_priority(self):
        """
        Add ``nice`` to this thread's niceness (Linux: a thread has its own).

        Raising one's niceness needs no privilege; lowering it back would, so the value is
        read once, at start. Elsewhere, or if refused, the thread runs at the bridge's priority
        and says so once.
        """
        if self._nice <= 0:
            return
        try:
            thread = threading.get_native_id()
            before = os.getpriority(os.PRIO_PROCESS, thread)
            os.setpriority(os.PRIO_PROCESS, thread, min(19, before + self._nice))
        except (AttributeError, OSError) as exc:
            self._log.warning('image intake: cannot lower its priority (%s); video runs at the '
                              "bridge's priority", exc)

    def _run(self):
        self._lower_priority()
        context = self._node.context
        while not self._stopping:
            with self._lock:
                entries = list(self._entries.values())
            try:
                taken = self._wait_and_take(context, entries)
            except (InvalidHandle, RuntimeError) as exc:   # shutting down, or a handle gone
                if self._stopping or not context.ok():
                    return
                self._note('wait', exc)
                continue
            for handler, buffer in taken:
                try:
                    handler(buffer)
                except Exception as exc:   # noqa: B902  the thread must go on
                    self._note(type(exc).__name__, exc)

    def _wait_and_take(self, context, entries) -> list:
        """One wait over the subscriptions; return (handler, CDR bytes or event) taken."""
        impl = self._impl
        taken = []
        with ExitStack() as held:   # handles kept alive (destroyed after, if asked meanwhile)
            held.enter_context(context.handle)
            held.enter_context(self._wake.handle)
            ready_to_wait, events = [], []
            for subscription, handler in entries:
                try:
                    held.enter_context(subscription.handle)
                except InvalidHandle:       # destroyed since the list was copied
                    continue
                ready_to_wait.append((subscription, handler))
                for event in getattr(subscription, 'event_handlers', ()):
                    try:
                        held.enter_context(event)
                    except InvalidHandle:
                        continue
                    events.append(event)
            wait_set = impl.WaitSet(len(ready_to_wait), 1, 0, 0, 0, len(events),
                                    context.handle)
            wait_set.clear_entities()
            for subscription, _ in ready_to_wait:
                wait_set.add_subscription(subscription.handle)
            for event in events:
                event.add_to_wait_set(wait_set)
            wait_set.add_guard_condition(self._wake.handle)
            wait_set.wait(self.WAIT_NS)
            ready = wait_set.get_ready_entities('subscription')
            for event in events:
                if event.is_ready(wait_set):
                    data = event.take_data()
                    if data and event.callback is not None:
                        taken.append((event.callback, data))
            for subscription, handler in ready_to_wait:
                if subscription.handle.pointer not in ready:
                    continue
                try:
                    message = subscription.handle.take_message(subscription.msg_type, True)
                except Exception as exc:   # noqa: B902  rmw refused this one: count, go on
                    self.failures += 1
                    self._note('take', exc)
                    continue
                if message is not None:
                    self.taken += 1
                    taken.append((handler, message[0]))
        return taken

    def _note(self, kind: str, exc: Exception):
        """Log one line per kind of problem (a message per frame would flood the log)."""
        if kind not in self._errors:
            self._errors.add(kind)
            self._log.error('image intake: %s: %s (logged once)', kind, exc)
