"""An example company tool: order status from a small table (orders.csv beside this file).

Load it with `moss chat --plugin-path examples/tools/order_status.py`; generate
training data for it with `moss data synth --recipe tool` (docs/custom-tools.md).
"""

import csv
from pathlib import Path

from mosslm.plugins.registry import Plugin

TABLE = Path(__file__).with_name("orders.csv")
# How `moss data synth --recipe tool` finds the argument in a question without one: an order number.
ARGUMENT_PATTERN = r"(?<![A-Za-z0-9])([Aa]\d{4})(?!\d)"
WHAT = {"delivered": "delivered on {date}", "shipped": "shipped via {carrier}, expected {date}",
        "processing": "being prepared, expected to ship by {date}", "cancelled": "cancelled on {date}",
        "returned": "returned via {carrier} on {date}"}


def order_status(order: str) -> str | None:
    """One line about the order, or None when there is no such order (the agent shows `No result.`)."""
    wanted = order.strip().upper()
    with TABLE.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["order"] == wanted:
                return f"Order {wanted}: " + WHAT[row["status"]].format(**row) + "."
    return None


PLUGIN = Plugin("OrderStatus", order_status, label="Order status", arg_name="order_id",
                description="Look up a customer order by its number (e.g. A1002): status, carrier and date.",
                timeout=5.0)
