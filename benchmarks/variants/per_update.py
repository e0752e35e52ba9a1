"""What one model logs after each of its updates: the shared hook of the per-update traces (issue 13).

``update_trace.py`` and ``multiplier_recovery.py`` import it; run them as scripts (``python
benchmarks/variants/NAME.py``), so that this folder is on the import path.
"""

from collections.abc import Callable
from typing import Any


def record_updates(model: Any, row: Callable[[dict[str, Any]], tuple]) -> list[tuple]:
    """
    Make ``model.train`` append ``row(logged)`` after every update, ``logged`` being what the update logged.

    :param model: An SB3 on-policy model before ``learn``.
    :param row: Called after each ``train()`` with ``model.logger.name_to_value`` (the logger ``learn`` set up),
        returns that update's record.
    :return: The list the records are appended to, in update order (filled while ``model.learn`` runs).
    """
    rows: list[tuple] = []
    train = model.train

    def train_and_record() -> None:
        train()
        rows.append(row(model.logger.name_to_value))

    model.train = train_and_record
    return rows
