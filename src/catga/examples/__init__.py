"""Example applications built on catga's public API.

* :mod:`catga.examples.orders` — the orders service (commands, query, events, event-sourced order,
  compensation on a declined payment).
* :mod:`catga.examples.orders_demo` — the scripted scenario ``catga demo`` runs.
"""

__all__: tuple[str, ...] = ()
