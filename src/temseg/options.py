"""The string options' allowed values, as ``Literal`` types, and the one check of them.

Every string setting or argument with a fixed set of values is typed with one
of these aliases; :func:`check_choice` is where a value is checked against it
(the settings, the engine loader and the stream's encoder all call it), so
the allowed values and the message that names them exist once.
"""

from __future__ import annotations

from typing import Literal, TypeAlias, get_args

#: Inference backend; "auto" picks one for the device (:func:`temseg.engine.choose_backend`).
Backend: TypeAlias = Literal["auto", "torch", "onnxruntime", "tensorrt"]
#: Floating-point precision an engine computes in.
Precision: TypeAlias = Literal["fp32", "fp16"]
#: How masks travel on the stream (docs/protocol.md).
MaskEncoding: TypeAlias = Literal["raw", "packbits"]
#: CPU scheduling of the daemon's readers, segmenters and recorder: "idle" runs them under
#: Linux's SCHED_IDLE (only on cores nothing else wants), "normal" leaves them as they are,
#: "auto" means "idle" when the engine computes on the CPU.
HostPriority: TypeAlias = Literal["auto", "normal", "idle"]


def choices(option: object) -> tuple[str, ...]:
    """The values a ``Literal`` alias above allows, in their order."""
    return tuple(str(value) for value in get_args(option))


def check_choice(
    name: str, value: object, option: object, error: type[Exception] = ValueError
) -> None:
    """Raise ``error`` naming ``name``, ``value`` and the allowed values unless ``value``
    is one of ``option``'s (a ``Literal`` alias above)."""
    allowed = choices(option)
    if value not in allowed:
        raise error(f"{name} {value!r}: choose from {', '.join(allowed)}")
