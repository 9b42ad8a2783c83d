"""Example applications built on catga's public API.

* :mod:`catga.examples.orders` — the orders service (commands, query, events, event-sourced order,
  compensation on a declined payment).
* :mod:`catga.examples.orders_demo` — the scripted scenario ``catga demo`` runs.
* :mod:`catga.examples.orders_workflow` — the same order as a durable workflow (reserve stock →
  charge → wait for shipment, compensated on a declined card or a shipment timeout), which
  ``catga demo --workflow`` runs.
"""

__all__: tuple[str, ...] = ()
