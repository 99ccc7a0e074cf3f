"""U-Net definition, model bundles (safetensors + JSON) and ONNX export."""

from temseg.model.bundle import (
    BUNDLE_FORMAT,
    ModelBundle,
    default_model_path,
    load_bundle,
    save_bundle,
)
from temseg.model.unet import Network, UNet, UNetConfig, build_unet

__all__ = [
    "BUNDLE_FORMAT",
    "ModelBundle",
    "Network",
    "UNet",
    "UNetConfig",
    "build_unet",
    "default_model_path",
    "load_bundle",
    "save_bundle",
]
