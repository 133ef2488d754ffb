"""pydantic models as activity arguments and results: :class:`PydanticPayloadConverter`.

Needs pydantic 2 (``pip install 'sessiond-client[pydantic]'``). Pass the converter to the client
and to the worker::

    converter = PydanticPayloadConverter()
    client = await SessionClient.connect(target, converter=converter)
    worker = SessionWorker(target, "queue", activities, converter=converter)

Models are encoded with ``model_dump(mode="json")`` and decoded with ``model_validate`` by the
activity's type hints (a model, or a model inside ``list[...]``, ``dict[...]``, ``X | None``, a
dataclass field, ...); everything else is handled as by the default converter.
"""

from __future__ import annotations

from typing import Any

from sessiond_client._converter import DefaultPayloadConverter

try:
    import pydantic
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a venv without pydantic
    raise ModuleNotFoundError(
        "sessiond_client.contrib.pydantic needs pydantic: pip install 'sessiond-client[pydantic]'", name=exc.name
    ) from exc

__all__ = ["PydanticPayloadConverter"]


class PydanticPayloadConverter(DefaultPayloadConverter):
    """The default JSON converter, plus pydantic models (validated on the way in)."""

    def to_json_value(self, value: Any) -> Any:
        """Models as their JSON-mode dump; anything else as the default converter does."""
        if isinstance(value, pydantic.BaseModel):
            return value.model_dump(mode="json")
        return super().to_json_value(value)

    def from_json_value(self, value: Any, type_hint: Any) -> Any:
        """Validate into a model when the hint is one; anything else as the default converter does.

        Raises:
            pydantic.ValidationError: The value does not validate as the model.
        """
        if isinstance(type_hint, type) and issubclass(type_hint, pydantic.BaseModel):
            return type_hint.model_validate(value)
        return super().from_json_value(value, type_hint)
