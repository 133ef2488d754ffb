"""The optional pydantic converter: models round-trip by their hints, nested in containers and
dataclasses too, invalid data is a validation error, and end to end a worker receives models."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pydantic
import pytest
from sessiond_client import activity
from sessiond_client.contrib.pydantic import PydanticPayloadConverter
from sessiond_client.testing import SessiondEnvironment

converter = PydanticPayloadConverter()


class Order(pydantic.BaseModel):
    id: int
    placed: dt.datetime
    items: list[str] = []


@dataclass
class Batch:
    orders: list[Order]
    note: str | None = None


ORDER = Order(id=7, placed=dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC), items=["a", "b"])


def test_a_model_round_trips_and_is_validated_by_its_hint() -> None:
    payload = converter.to_payload(ORDER)
    assert payload.data == b'{"id":7,"placed":"2026-11-30T09:00:00Z","items":["a","b"]}'
    assert converter.from_payload(payload, Order) == ORDER


def test_models_inside_containers_and_dataclasses() -> None:
    assert converter.from_payload(converter.to_payload([ORDER]), list[Order]) == [ORDER]
    assert converter.from_payload(converter.to_payload({"k": ORDER}), dict[str, Order | None]) == {"k": ORDER}
    batch = Batch([ORDER], note="n")
    assert converter.from_payload(converter.to_payload(batch), Batch) == batch


def test_invalid_data_is_a_validation_error() -> None:
    with pytest.raises(pydantic.ValidationError):
        converter.from_payload(converter.to_payload({"id": "not a number", "placed": "x"}), Order)


@activity.defn
async def total(batch: Batch, extra: Order) -> Order:
    assert all(isinstance(o, Order) for o in batch.orders) and isinstance(extra, Order)
    items = [i for o in [*batch.orders, extra] for i in o.items]
    return Order(id=0, placed=extra.placed, items=items)


@pytest.mark.asyncio
async def test_end_to_end_the_worker_gets_models_and_the_caller_gets_one_back() -> None:
    async with SessiondEnvironment.start(activities=[total], converter=converter) as env:
        async with env.client.create_session(env.task_queue) as session:
            result = await session.execute_activity(total, Batch([ORDER]), ORDER)
    assert result == Order(id=0, placed=ORDER.placed, items=["a", "b", "a", "b"])
