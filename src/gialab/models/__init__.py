"""Models attacked in the gradient inversion literature, built by name for a data shape.

``build_model(name, shape, num_classes)`` with ``name`` in :data:`MODELS`: DLG's Sigmoid LeNet,
Inverting Gradients' ConvNet, a CIFAR ResNet-18, a 6-layer fully connected net (whose first
Linear, ``FCNet.input_layer``, is what analytic attacks target) and R-GAP's LeakyReLU CNN6.
``load_weights`` loads a checkpoint safely (``weights_only``).
"""

from gialab.models.cnn6 import CNN6
from gialab.models.convnet import ConvNet
from gialab.models.fcnet import FCNet
from gialab.models.lenet import LeNet
from gialab.models.registry import MODELS, build_model, count_parameters, describe, model_names
from gialab.models.resnet import BasicBlock, ResNet18
from gialab.models.weights import load_weights

__all__ = [
    "MODELS",
    "BasicBlock",
    "CNN6",
    "ConvNet",
    "FCNet",
    "LeNet",
    "ResNet18",
    "build_model",
    "count_parameters",
    "describe",
    "load_weights",
    "model_names",
]
