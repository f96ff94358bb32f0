"""Models: the registry, ZFNet, AlexNet and their layer metadata."""

from zfnet.models import alexnet as _alexnet  # noqa: F401  (registers its builders)
from zfnet.models import zfnet as _zfnet  # noqa: F401
from zfnet.models.convnet import (
    ConvNet,
    ConvSpec,
    NetConfig,
    apply_overrides,
    filter_rms,
    is_zfnet_model,
    zfnet_config,
)
from zfnet.models.geometry import (
    GeometryError,
    LayerGeometry,
    feature_size,
    graph_geometry,
    sequential_geometry,
)
from zfnet.models.layers import (
    LayerInfo,
    NoSpatialStageError,
    UnknownLayerError,
    chain_checked,
    chain_root,
    chain_runs_as_forward,
    check_has_modules,
    feature_layers,
    first_convs,
    hooked,
    last_spatial_layer,
    layer_geometries,
    layer_geometry,
    layer_info,
    layer_name,
    layer_names,
    repeated_layers,
    resolve_layer,
    score_layer,
    vector_layer,
)
from zfnet.models.lrn import LocalResponseNorm
from zfnet.models.modes import eval_mode
from zfnet.models.options import (
    MODEL_OPTIONS,
    check_model_option,
    check_model_options,
    parse_model_option,
)
from zfnet.models.registry import create_model, list_models, register_model

__all__ = [
    "MODEL_OPTIONS", "ConvNet", "ConvSpec", "LayerGeometry", "LayerInfo", "LocalResponseNorm",
    "NetConfig", "NoSpatialStageError", "UnknownLayerError",
    "apply_overrides", "check_has_modules", "check_model_option", "check_model_options",
    "create_model",
    "eval_mode", "feature_size", "filter_rms", "layer_geometry", "layer_info", "layer_name",
    "layer_names", "list_models", "parse_model_option",
    "register_model", "resolve_layer", "sequential_geometry",
    "GeometryError", "graph_geometry",
    "feature_layers", "first_convs", "is_zfnet_model", "last_spatial_layer", "layer_geometries",
    "vector_layer", "repeated_layers", "score_layer", "chain_checked", "chain_root",
    "chain_runs_as_forward", "hooked", "zfnet_config",
]
