"""zfnet: ZFNet (Zeiler & Fergus 2013), its recipe, the deconvnet and the paper's analyses."""

from zfnet.models import create_model, layer_info, list_models, resolve_layer

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "layer_info", "list_models", "resolve_layer"]
