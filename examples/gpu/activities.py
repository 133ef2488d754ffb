"""The activity the GPU workers run: it reports which worker it ran on and how many GPUs its session holds."""

from __future__ import annotations

from typing import Any

from sessiond_client import activity


@activity.defn
async def train(job: str) -> dict[str, Any]:
    """Pretend to train on the GPUs this session holds (a real activity would pick its devices here)."""
    info = activity.info()
    return {"job": job, "worker": info.worker_id, "gpus": info.resources.get("gpu", 0)}


ACTIVITIES = [train]
