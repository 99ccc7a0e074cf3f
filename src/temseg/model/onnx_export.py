"""Export the probability graph (:class:`ProbabilityModel`) to ONNX.

The graph has one input ``image`` (N, 1, H, W) and one output ``probability``
(N, 1, H, W), both float32 (float16 for an ``fp16`` export). Batch, height and
width are dynamic axes; height and width must still be multiples of the
model's ``size_multiple`` pixels at run time.

Every exported file carries three metadata entries, ``temseg.model_id``,
``temseg.precision`` and ``temseg.graph`` (:data:`GRAPH_VERSION`), so a cached
or bundled ``model.onnx`` can be checked against the weights it claims to
hold and the graph this version of temseg exports (:func:`onnx_matches`).
"""

from __future__ import annotations

import copy
import hashlib
import os
import uuid
import warnings
from pathlib import Path

import onnx
import torch
from google.protobuf.message import DecodeError

from temseg.model.bundle import ModelBundle
from temseg.model.unet import Network, ProbabilityModel

INPUT_NAME = "image"
OUTPUT_NAME = "probability"
DEFAULT_OPSET = 17
META_MODEL_ID = "temseg.model_id"
META_PRECISION = "temseg.precision"
META_GRAPH = "temseg.graph"
#: Raised whenever the exported graph changes for the same weights, so that
#: older exports are replaced. 2: two-class head folded into a sigmoid.
GRAPH_VERSION = "2"
_DYNAMIC_AXES = {0: "batch", 2: "height", 3: "width"}


def _unet_of(source: ModelBundle | Network | ProbabilityModel) -> Network:
    if isinstance(source, ModelBundle):
        return source.model
    if isinstance(source, ProbabilityModel):
        return source.unet
    if isinstance(source, Network):
        return source
    raise TypeError(
        f"expected a ModelBundle, Network or ProbabilityModel, got {type(source).__name__}"
    )


def model_fingerprint(source: ModelBundle | Network | ProbabilityModel) -> str:
    """Identity of a network's weights: the bundle's ``model_id`` when it has one.

    Otherwise the first 16 hex digits of a SHA-256 over parameter names,
    shapes, dtypes and values (stable across runs for identical weights).
    """
    if isinstance(source, ModelBundle) and source.metadata.get("model_id"):
        return str(source.metadata["model_id"])
    digest = hashlib.sha256()
    for name, tensor in sorted(_unet_of(source).state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
        digest.update(value.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def export_onnx(
    bundle_or_model: ModelBundle | Network | ProbabilityModel,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
    fp16: bool = False,
    shape: tuple[int, int, int, int] | None = None,
) -> Path:
    """Write the probability graph to ``path`` (replaced atomically) and return the path.

    ``fp16`` converts weights, input and output to float16. ``dynamic`` makes
    batch, height and width dynamic axes; ``shape`` is the (N, C, H, W) example
    input used for tracing and, with ``dynamic=False``, the fixed input shape
    (default: one frame of 4 * ``size_multiple`` pixels square). The written
    file passes ``onnx.checker`` or this raises ``onnx.checker.ValidationError``.
    The network passed in is not modified.
    """
    unet = _unet_of(bundle_or_model)
    dtype = torch.float16 if fp16 else torch.float32
    graph = ProbabilityModel(copy.deepcopy(unet)).to(device="cpu", dtype=dtype).eval()
    side = 4 * unet.config.size_multiple
    example_shape = shape or (1, unet.config.in_channels, side, side)
    example = torch.zeros(example_shape, dtype=dtype)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A unique sibling name (not mkstemp, which would make the file owner-only).
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of the dynamo
            # one, which needs onnxscript; this graph only uses core ops.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                graph,
                (example,),
                str(tmp),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamic_axes=(
                    {INPUT_NAME: _DYNAMIC_AXES, OUTPUT_NAME: _DYNAMIC_AXES} if dynamic else None
                ),
                do_constant_folding=True,
            )
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(
            proto,
            {
                META_MODEL_ID: model_fingerprint(bundle_or_model),
                META_PRECISION: "fp16" if fp16 else "fp32",
                META_GRAPH: GRAPH_VERSION,
            },
        )
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (weights are not loaded)."""
    proto = onnx.load(str(path), load_external_data=False)
    return {entry.key: entry.value for entry in proto.metadata_props}


def onnx_matches(
    path: str | Path,
    bundle_or_model: ModelBundle | Network | ProbabilityModel,
    *,
    fp16: bool = False,
) -> bool:
    """True when ``path`` is a readable, current ONNX export of these weights at this precision."""
    try:
        meta = onnx_metadata(path)
    except (OSError, DecodeError):
        return False
    return (
        meta.get(META_MODEL_ID) == model_fingerprint(bundle_or_model)
        and meta.get(META_PRECISION) == ("fp16" if fp16 else "fp32")
        and meta.get(META_GRAPH) == GRAPH_VERSION
    )
