"""A Rollway rollout strategy in Python: "waves".

Devices go out in waves of growing size (the first wave `first` devices,
each next one `growth` times the last). A wave is released once every
device of the one before it finished, at most `max_failure_percent` of
them failed, and `soak_secs` passed since that wave went out; more
failures than that abort the job.

Configuration (JSON), every field optional:
    {"first": 10, "growth": 2.0, "max_failure_percent": 5.0, "soak_secs": 300}

Build: see README.md. Everything arrives in the call: the strategy keeps no
state between calls and reads no clock (the snapshot's `now` is the time).
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import rollout
from wit_world.imports import types

DEFAULTS = {"first": 10, "growth": 2.0, "max_failure_percent": 5.0, "soak_secs": 300}


def load(config: str) -> dict:
    try:
        given = json.loads(config) if config.strip() else {}
    except ValueError as error:
        raise Err(f"the configuration is not JSON: {error}")
    if not isinstance(given, dict):
        raise Err("the configuration must be a JSON object")
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise Err(f"unknown field(s): {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    merged = dict(DEFAULTS, **given)
    if not isinstance(merged["first"], int) or merged["first"] < 1:
        raise Err("'first' must be a whole number of devices, at least 1")
    if not isinstance(merged["growth"], (int, float)) or not 1.0 <= merged["growth"] <= 100.0:
        raise Err("'growth' must be a number from 1 to 100")
    if not isinstance(merged["max_failure_percent"], (int, float)) or not 0 <= merged["max_failure_percent"] <= 100:
        raise Err("'max_failure_percent' must be a number from 0 to 100")
    if not isinstance(merged["soak_secs"], int) or merged["soak_secs"] < 0:
        raise Err("'soak_secs' must be a whole number of seconds, 0 or more")
    return merged


def finished(batch: rollout.BatchCounts) -> int:
    return batch.succeeded + batch.failed + batch.timed_out + batch.cancelled


class Rollout(exports.Rollout):
    def info(self) -> types.PluginInfo:
        return types.PluginInfo(
            name="rollout-waves",
            version="0.1.0",
            description="Waves of growing size, each after the last one soaked (Python)",
        )

    def validate_config(self, config: str) -> None:
        load(config)

    def plan(self, config: str, total: int) -> list[int]:
        c = load(config)
        sizes, wave = [], float(c["first"])
        while sum(sizes) < total:
            size = min(max(1, int(wave)), total - sum(sizes))
            sizes.append(size)
            wave *= c["growth"]
        return sizes

    def evaluate(self, config: str, snapshot: rollout.Snapshot) -> rollout.Decision:
        c = load(config)
        started = [b for b in snapshot.batches if b.started_at is not None]
        if not started:
            return rollout.Decision_StartNextBatch()
        last = started[-1]
        failed = last.failed + last.timed_out
        if failed * 100.0 > c["max_failure_percent"] * last.total:
            return rollout.Decision_Abort(
                f"wave {last.group}: {failed} of {last.total} devices failed "
                f"(more than {c['max_failure_percent']}%)"
            )
        if finished(last) < last.total:
            return rollout.Decision_Wait(30_000)
        if len(started) == len(snapshot.batches):
            return rollout.Decision_Complete()
        soaked_at = last.started_at + c["soak_secs"] * 1000
        if snapshot.now < soaked_at:
            return rollout.Decision_Wait(soaked_at - snapshot.now)
        return rollout.Decision_StartNextBatch()
