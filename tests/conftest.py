from typing import Any

import pytest
from stable_baselines3.common.logger import KVWriter, Logger


class RecordingWriter(KVWriter):
    """Keeps every dump of the SB3 logger, so tests can assert on the logged values."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        self.records.append(dict(key_values))

    def close(self) -> None:
        pass

    def series(self, key: str) -> list[Any]:
        return [record[key] for record in self.records if key in record]


@pytest.fixture
def recorder() -> RecordingWriter:
    return RecordingWriter()


def attach(model, writer: RecordingWriter):
    model.set_logger(Logger(folder=None, output_formats=[writer]))
    return model


def variance_target_ends(value: float | str) -> tuple[float, float]:
    """
    δ at the start and at the end of training as a YAML entry writes it, read here independently of the loader:
    ``0.04`` -> (0.04, 0.04); ``lin_0.04`` -> (0.04, 0.0); ``lin_0.04_0.01`` -> (0.04, 0.01).
    """
    if isinstance(value, str):
        ends = [float(part) for part in value.removeprefix("lin_").split("_")]
        return ends[0], ends[1] if len(ends) == 2 else 0.0
    return float(value), float(value)
