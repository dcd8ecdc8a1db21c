"""Test fixture: a rollout strategy in Python that reports what it reads
of time and chance through Python's own library: `validate-config`
refuses with the readings, `evaluate` pauses with them."""

import os
import random
import time
import uuid

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import rollout
from wit_world.imports import types


def probe() -> str:
    started = time.monotonic_ns()
    sum(range(100_000))
    # A sleep far beyond the call's budget: over at once in the sandbox.
    time.sleep(30)
    return " ".join(
        [
            f"wall_ms={time.time_ns() // 1_000_000}",
            f"monotonic_ns={time.monotonic_ns()}",
            f"elapsed_ns={time.monotonic_ns() - started}",
            f"urandom={os.urandom(16).hex()}",
            f"random={random.SystemRandom().getrandbits(64):x}",
            f"uuid={uuid.uuid4()}",
        ]
    )


class Rollout(exports.Rollout):
    def info(self) -> types.PluginInfo:
        return types.PluginInfo(name="python-probe", version="0.1.0", description="reads clocks and entropy")

    def validate_config(self, config: str) -> None:
        raise Err(probe())

    def plan(self, config: str, total: int) -> list[int]:
        return [total]

    def evaluate(self, config: str, snapshot: rollout.Snapshot) -> rollout.Decision:
        return rollout.Decision_Pause(f"{probe()} now={snapshot.now}")
