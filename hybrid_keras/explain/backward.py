"""What a ReLU passes backwards, and models rewired to use it.

Zeiler & Fergus's deconvnet (ECCV 2014) projects an activation back to the pixels through
each layer in reverse: unpooling through the max-pooling "switches", rectification, and the
transposed filters. Two of those three steps are exactly what backpropagation does: the
gradient of max pooling routes each value to the position that won the max (the switch), and
the gradient of a convolution is the convolution with the transposed filters. Only the ReLU
differs: backpropagation passes ``g * (x > 0)`` (masked by the forward input), the deconvnet
passes ``relu(g)`` (the backward signal rectified, whatever the forward input was). So a
deconvnet is backpropagation through a copy of the model whose ReLUs have that backward rule.

Guided backpropagation (Springenberg et al., "Striving for Simplicity", ICLR 2015 workshop)
applies both masks, ``g * (x > 0) * (g > 0)``; plain ``"gradient"`` is the saliency map of
Simonyan et al. (2014). :data:`RULES` names the three.

:func:`rectified_relu` is the ReLU family (ReLU, ReLU6, leaky, thresholded: Keras'
``activations.relu`` arguments) with a chosen backward rule, through
``keras.ops.custom_gradient`` (TensorFlow, JAX and PyTorch). :func:`rewire` copies a
functional model with every ReLU (``ReLU``/``LeakyReLU`` layers, ``Activation("relu")``,
``activation="relu"``/``"relu6"``/``"leaky_relu"`` arguments, in nested models too) given the
rule; the copy shares the original's weights.
"""

from __future__ import annotations

import keras
from keras import ops

RULES = ("deconvnet", "guided", "gradient")
_RELU_NAMES = {"relu": {}, "relu6": {"max_value": 6.0}, "leaky_relu": {"negative_slope": 0.2}}


def _check_rule(rule):
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}. Received: rule={rule!r}")


def rectified_relu(x, rule: str = "deconvnet", *, max_value=None, negative_slope: float = 0.0,
                   threshold: float = 0.0):
    """``keras.activations.relu(x, negative_slope, max_value, threshold)`` forwards; backwards,
    ``relu(g)`` (``"deconvnet"``), ``relu(g) * relu'(x)`` (``"guided"``) or ``g * relu'(x)``
    (``"gradient"``, the true gradient)."""
    _check_rule(rule)

    def forward(x):
        return keras.activations.relu(x, negative_slope=negative_slope, max_value=max_value, threshold=threshold)

    if rule == "gradient":
        return forward(x)

    @ops.custom_gradient
    def relu_with_rule(x):
        def grad(*args, upstream=None):
            if upstream is None:  # TensorFlow and JAX pass the upstream gradient positionally
                (upstream,) = args
            rectified = ops.relu(upstream)
            if rule == "deconvnet":
                return rectified
            slope = ops.where(x > threshold, 1.0, negative_slope)
            if max_value is not None:
                slope = ops.where(x >= max_value, 0.0, slope)
            return rectified * ops.cast(slope, rectified.dtype)

        return forward(x), grad

    return relu_with_rule(x)


@keras.saving.register_keras_serializable(package="hybrid_keras")
class RectifiedReLU(keras.layers.Layer):
    """A ReLU (``max_value``, ``negative_slope``, ``threshold`` as ``keras.layers.ReLU``) whose
    backward pass follows ``rule`` (see :func:`rectified_relu`)."""

    def __init__(self, rule: str = "deconvnet", max_value=None, negative_slope: float = 0.0,
                 threshold: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        _check_rule(rule)
        if max_value is not None and max_value < 0:
            raise ValueError(f"max_value must be None or >= 0. Received: max_value={max_value}")
        self.rule = rule
        self.max_value = None if max_value is None else float(max_value)
        self.negative_slope = float(negative_slope)
        self.threshold = float(threshold)

    def call(self, inputs):
        return rectified_relu(inputs, self.rule, max_value=self.max_value, negative_slope=self.negative_slope,
                              threshold=self.threshold)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rule": self.rule, "max_value": self.max_value,
                "negative_slope": self.negative_slope, "threshold": self.threshold}


def _relu_arguments(layer):
    """The ReLU arguments of a layer that is (or ends in) a ReLU, else None."""
    if isinstance(layer, keras.layers.ReLU):
        return {"max_value": None if layer.max_value is None else float(layer.max_value),
                "negative_slope": float(layer.negative_slope), "threshold": float(layer.threshold)}
    if isinstance(layer, keras.layers.LeakyReLU):
        return {"negative_slope": float(layer.negative_slope)}
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", None)
    if callable(activation) and name in _RELU_NAMES and activation is getattr(keras.activations, name):
        return dict(_RELU_NAMES[name])
    return None


class _CallWithActivation(keras.layers.Layer):
    """Calls a layer (its weights shared) with its ``activation`` replaced for the call.

    Used only inside the transient copies :func:`rewire` makes for explanations; never saved.
    """

    def __init__(self, layer, activation, **kwargs):
        super().__init__(name=layer.name, dtype=layer.dtype_policy, **kwargs)
        self.inner = layer
        self.replacement = activation

    def call(self, inputs):
        original = self.inner.activation
        self.inner.activation = self.replacement
        try:
            return self.inner(inputs)
        finally:
            self.inner.activation = original

    def compute_output_shape(self, input_shape):
        return self.inner.compute_output_shape(input_shape)


class _ChannelOrderBackward(keras.layers.Layer):
    """Runs a ``Preprocessing`` layer forwards; backwards passes the signal through unscaled,
    only undoing its channel reordering (BGR models' projections come back as RGB)."""

    def __init__(self, layer, **kwargs):
        super().__init__(name=layer.name, dtype=layer.dtype_policy, **kwargs)
        self.inner = layer

    def call(self, inputs):
        inner = self.inner
        flip = inner.channel_order == "bgr"

        @ops.custom_gradient
        def pixels_in(x):
            def grad(*args, upstream=None):
                if upstream is None:
                    (upstream,) = args
                return ops.flip(upstream, axis=-1) if flip else upstream

            return inner(x), grad

        return pixels_in(ops.cast(inputs, self.compute_dtype))

    def compute_output_shape(self, input_shape):
        return input_shape


def output_layer(model):
    """The layer that computes the model's (first) output."""
    return model.outputs[0]._keras_history.operation


def ends_in_softmax(model) -> bool:
    """Whether the model's (first) output comes out of a softmax (an ``Activation`` layer or a
    layer's ``activation`` argument)."""
    return getattr(getattr(output_layer(model), "activation", None), "__name__", None) == "softmax"


def functional(model) -> keras.Model:
    """The model as a Functional graph (a built Sequential model becomes one over the same layers)."""
    if not isinstance(model, keras.Model):
        raise ValueError(f"model must be a keras.Model. Received: {type(model).__name__}")
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        raise ValueError(f"model must be a Functional or built Sequential model (one with inputs and outputs); a "
                         f"subclassed model has no graph to rewire. Received: {type(model).__name__} {model.name!r}")
    if len(inputs) != 1:
        raise ValueError(f"model must take one input (images). Received: a model with {len(inputs)} inputs")
    return keras.Model(inputs, outputs, name=model.name) if isinstance(model, keras.Sequential) else model


def find_layer(model, name: str):
    """A top-level layer by name, or a ValueError listing the close matches."""
    for layer in model.layers:
        if layer.name == name:
            return layer
    import difflib

    names = [layer.name for layer in model.layers]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    raise ValueError(f"layer must name a top-level layer of {model.name!r}" +
                     (f" (close: {', '.join(close)})" if close else f" (its layers: {', '.join(names[:12])}...)") +
                     f". Received: layer={name!r}")


def rewire(model, rule: str = "deconvnet", *, layer: str | None = None, probe: bool = False, logits: bool = False,
           pixel_space: bool | None = None) -> keras.Model:
    """A copy of ``model`` (sharing its weights) for explanations.

    - every ReLU backpropagates by ``rule`` (``"gradient"`` leaves them as they are);
    - ``layer``: the copy outputs ``[that layer's output, the model's output]``;
    - ``probe=True`` (with ``layer``): the copy takes a second input, added to that layer's
      output, so the gradient with respect to it is the gradient with respect to the layer;
    - ``logits=True``: a softmax at the model's output is dropped;
    - ``pixel_space`` (default: when the rule is not "gradient"): ``Preprocessing`` layers pass
      the backward signal through unscaled, only undoing their channel order.
    """
    from hybrid_keras.layers import Preprocessing

    _check_rule(rule)
    if probe and layer is None:
        raise ValueError("probe=True needs layer: the probe is added to that layer's output. Received: layer=None")
    model = functional(model)
    target = find_layer(model, layer) if layer is not None else None
    pixel_space = rule != "gradient" if pixel_space is None else pixel_space
    last = output_layer(model) if logits else None

    replacements = {}

    def clone_function(original):
        replacements[id(original)] = replacement = _replacement(original)
        return replacement

    def _replacement(original):
        if isinstance(original, keras.Model):  # a nested model: rewired the same way, at any depth
            try:
                return keras.models.clone_model(original, clone_function=clone_function)
            except ValueError:  # a subclassed model has no graph to copy: it stays as it is
                return original
        if original is last and getattr(getattr(original, "activation", None), "__name__", None) == "softmax":
            if isinstance(original, keras.layers.Activation):
                return keras.layers.Identity(name=original.name)
            return _CallWithActivation(original, keras.activations.linear)
        if pixel_space and isinstance(original, Preprocessing):
            return _ChannelOrderBackward(original)
        arguments = _relu_arguments(original) if rule != "gradient" else None
        if arguments is None:
            return original
        if isinstance(original, (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.Activation)):
            return RectifiedReLU(rule, name=original.name, dtype=original.dtype_policy, **arguments)
        return _CallWithActivation(original, lambda x: rectified_relu(x, rule, **arguments))

    taps = {}
    image = keras.Input(batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype, name="images")

    def call_function(operation, *args, **kwargs):
        outputs = operation(*args, **kwargs)
        if target is not None and "tap" not in taps and operation is replacements.get(id(target)):
            if probe:
                taps["probe"] = keras.Input(batch_shape=outputs.shape, dtype=outputs.dtype, name="probe")
                outputs = keras.layers.Add(name=f"{layer}_probe")([outputs, taps["probe"]])
            taps["tap"] = outputs
        return outputs

    copy = keras.models.clone_model(model, input_tensors=image, clone_function=clone_function,
                                    call_function=call_function)
    if layer is None:
        return keras.Model(image, copy.outputs[0], name=f"{model.name}_{rule}")
    if "tap" not in taps:
        raise ValueError(f"layer {layer!r} is not on the path from {model.name!r}'s input to its output. "
                         f"Received: layer={layer!r}")
    inputs = [image, taps["probe"]] if probe else image
    return keras.Model(inputs, [taps["tap"], copy.outputs[0]], name=f"{model.name}_{rule}")
