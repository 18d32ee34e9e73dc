"""Device specs: ``KIND:ADDRESS[?key=value&…]`` (``host:onnxruntime?warm=1``, ``tcp:10.0.0.2:5555?runtime=onnxruntime``,
``farm:farm.yaml?group=…``). One parser for every kind, so options are spelled, split and refused alike; which
options a kind takes is the kind's own business (its ``open_…`` function)."""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from .base import DeviceError


@dataclass(frozen=True)
class DeviceSpec:
    """A parsed device spec: ``base`` (the device without options) and ``options`` (the last value of a key
    given twice wins).

    >>> DeviceSpec.parse("host:onnxruntime?warm=1")
    DeviceSpec(text='host:onnxruntime?warm=1', base='host:onnxruntime', options={'warm': '1'})
    """

    text: str
    base: str
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "DeviceSpec":
        base, _, query = text.partition("?")
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError:
            raise DeviceError(f"device {text!r}: options must read ?key=value&key=value, got {query!r}") from None
        return cls(text, base, dict(pairs))

    @property
    def kind(self) -> str:
        return self.base.partition(":")[0]

    def unknown(self, known) -> list[str]:
        """The option keys not in ``known``, sorted."""
        return sorted(set(self.options) - set(known))


def base_device(text: str) -> str:
    """The device a spec names, without its options: ``host:onnxruntime?warm=1`` → ``host:onnxruntime``."""
    return text.partition("?")[0]


__all__ = ["DeviceSpec", "base_device"]
