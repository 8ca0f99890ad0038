"""What every model config dataclass shares: a JSON-ready dict and back."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Self


class ConfigDict:
    """Mixin for config dataclasses: ``to_dict`` for checkpoints, ``from_dict`` that
    ignores keys the class does not know (metadata stored beside the sizes)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
