"""Counting XLA compilations in a test (for "does not recompile" checks)."""

import jax

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def compile_events() -> list[str]:
    """A list that grows by one entry per backend compilation from now on (for the process)."""
    events = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, *_a, **_k: events.append(name) if name == COMPILE_EVENT else None
    )
    return events
