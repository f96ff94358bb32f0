"""Models: the registry, ZFNet, AlexNet and their layer metadata."""

from zfnet.models import alexnet as _alexnet  # noqa: F401  (registers its builders)
from zfnet.models import zfnet as _zfnet  # noqa: F401
from zfnet.models.convnet import ConvNet, ConvSpec, NetConfig, apply_overrides, filter_rms
from zfnet.models.geometry import LayerGeometry, feature_size, sequential_geometry
from zfnet.models.layers import LayerInfo, UnknownLayerError, layer_info, resolve_layer
from zfnet.models.lrn import LocalResponseNorm
from zfnet.models.modes import eval_mode
from zfnet.models.registry import create_model, list_models, register_model

__all__ = [
    "ConvNet", "ConvSpec", "LayerGeometry", "LayerInfo", "LocalResponseNorm", "NetConfig",
    "UnknownLayerError",
    "apply_overrides", "create_model", "eval_mode", "filter_rms", "feature_size", "layer_info",
    "list_models",
    "register_model", "resolve_layer", "sequential_geometry",
]
