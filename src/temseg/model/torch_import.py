"""Read the tensors of a file written by ``torch.save`` without running pickled code.

``torch.save`` writes a zip archive: ``<name>/data.pkl`` (a pickle of the
saved object) and one raw little-endian file per tensor storage
(``<name>/data/<key>``). Unpickling a whole saved module would import and
run whatever classes and callables the pickle names. Here the pickle is read
by an unpickler that resolves only names on an allow-list:

- tensor reconstruction (``torch._utils._rebuild_tensor_v2``,
  ``_rebuild_parameter``), storage types (``torch.FloatStorage`` ...),
  ``collections.OrderedDict`` and ``set``, each replaced by temseg's own
  function that builds the tensor from the archive's bytes;
- layer classes (``torch.nn`` containers, convolution, batch norm, ReLU,
  pooling, upsampling, dropout) and the architecture classes named in
  :data:`ARCHITECTURE_CLASSES` (from any module): never imported, each
  becomes an inert :class:`ModuleRecord` that only stores its pickled state.

Any other name (``os.system``, ``builtins.eval``, any unknown class) makes
the read fail with :class:`UnsafePickleError` before anything is called.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ARCHITECTURE_CLASSES = frozenset({"UNet", "ResidualBlock"})
LAYER_CLASSES = frozenset(
    {
        ("torch.nn.modules.container", "ModuleList"),
        ("torch.nn.modules.container", "Sequential"),
        ("torch.nn.modules.conv", "Conv2d"),
        ("torch.nn.modules.batchnorm", "BatchNorm2d"),
        ("torch.nn.modules.activation", "ReLU"),
        ("torch.nn.modules.pooling", "MaxPool2d"),
        ("torch.nn.modules.upsampling", "Upsample"),
        ("torch.nn.modules.dropout", "Dropout"),
    }
)
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
MAX_PICKLE_BYTES = 16 << 20
#: All tensors of one file together; the published networks hold under 1 MiB.
MAX_TENSOR_BYTES = 1 << 30


class TorchFileError(ValueError):
    """A file is not a readable ``torch.save`` archive of tensors and layers."""


class UnsafePickleError(TorchFileError):
    """The pickle names something outside the allow-list (it may run code)."""


class ModuleRecord:
    """Stand-in for a pickled ``nn.Module``: its class name and pickled ``state``, nothing else."""

    origin: tuple[str, str] = ("", "")

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise UnsafePickleError(f"unexpected state for {'.'.join(self.origin)}")
        self._state = state

    @property
    def state(self) -> dict[str, Any]:
        """The pickled attributes (``_parameters``, ``_modules``, settings); empty if none."""
        return dict(self.__dict__.get("_state", {}))

    @property
    def class_name(self) -> str:
        return self.origin[1]


def _record_class(module: str, name: str) -> type[ModuleRecord]:
    return type(name, (ModuleRecord,), {"origin": (module, name), "__module__": __name__})


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(
    storage: torch.Tensor,
    offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    *_: Any,
) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise UnsafePickleError("tensor without a storage")
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset)).clone()


def _rebuild_parameter(data: torch.Tensor, *_: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError("parameter without a tensor")
    return data


_FUNCTIONS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
}


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, read_storage: Callable[[str, torch.dtype, int], torch.Tensor]):
        super().__init__(io.BytesIO(data))
        self._read_storage = read_storage

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _FUNCTIONS:
            return _FUNCTIONS[module, name]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if (module, name) in LAYER_CLASSES or name in ARCHITECTURE_CLASSES:
            return _record_class(module, name)
        raise UnsafePickleError(
            f"the pickle asks for {module}.{name}, which is not on the allow-list of "
            "tensor and layer types"
        )

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError("a storage of an unknown type")
        return self._read_storage(str(key), storage_type.dtype, int(numel))


def read_torch_file(path: str | Path) -> Any:
    """The object a ``torch.save`` file holds, with tensors rebuilt and modules as records.

    Saved ``nn.Module`` objects come back as :class:`ModuleRecord` trees,
    state dicts as ``OrderedDict`` of tensors. Raises :class:`TorchFileError`
    (or its subclass :class:`UnsafePickleError`) with a one-line reason.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise TorchFileError(
            f"{path}: not a PyTorch archive (torch.save writes a zip file since PyTorch 1.6)"
        ) from exc
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise TorchFileError(f"{path}: not a PyTorch archive (no single <name>/data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in names and archive.read(byteorder).strip() not in (b"little", b""):
            raise TorchFileError(f"{path}: big-endian tensors are not supported")
        if archive.getinfo(pickles[0]).file_size > MAX_PICKLE_BYTES:
            raise TorchFileError(f"{path}: the pickle is larger than {MAX_PICKLE_BYTES} bytes")

        total = [0]

        def read_storage(key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
            member = f"{prefix}data/{key}"
            size = numel * torch.empty((), dtype=dtype).element_size()
            total[0] += size
            if total[0] > MAX_TENSOR_BYTES:
                raise TorchFileError(f"tensors larger than {MAX_TENSOR_BYTES} bytes in all")
            try:
                info = archive.getinfo(member)
            except KeyError as exc:
                raise TorchFileError(f"{path}: storage {key} is missing") from exc
            if info.file_size != size:
                raise TorchFileError(
                    f"{path}: storage {key} holds {info.file_size} bytes, not {size}"
                )
            data = bytearray(archive.read(member))
            if not data:
                return torch.empty(0, dtype=dtype)
            return torch.frombuffer(data, dtype=dtype)

        unpickler = _AllowListUnpickler(archive.read(pickles[0]), read_storage)
        try:
            return unpickler.load()
        except TorchFileError as exc:
            raise type(exc)(f"{path}: {exc}") from exc
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, RuntimeError) as exc:
            raise TorchFileError(f"{path}: unreadable pickle: {exc}") from exc


def module_state_dict(root: Any) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of a :class:`ModuleRecord` tree, as ``state_dict`` names.

    A plain mapping of names to tensors (a saved ``state_dict``) is returned as it is.
    """
    if isinstance(root, dict) and all(isinstance(v, torch.Tensor) for v in root.values()):
        return dict(root)
    if not isinstance(root, ModuleRecord):
        raise TorchFileError(f"holds a {type(root).__name__}, not a network or a state dict")
    out: dict[str, torch.Tensor] = {}

    def walk(record: ModuleRecord, prefix: str) -> None:
        state = record.state
        skip = state.get("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            for name, tensor in (state.get(group) or {}).items():
                if tensor is not None and name not in skip:
                    out[prefix + name] = tensor
        for name, child in (state.get("_modules") or {}).items():
            if isinstance(child, ModuleRecord):
                walk(child, f"{prefix}{name}.")

    walk(root, "")
    return out


def iter_records(root: ModuleRecord) -> list[ModuleRecord]:
    """``root`` and every module record below it, depth first."""
    found = [root]
    for child in (root.state.get("_modules") or {}).values():
        if isinstance(child, ModuleRecord):
            found += iter_records(child)
    return found
