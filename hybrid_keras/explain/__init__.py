"""Seeing what a network learnt: deconvnet projections and occlusion maps (Zeiler & Fergus,
ECCV 2014), guided backpropagation, and Grad-CAM (Selvaraju et al., ICCV 2017), for any
functional Keras model (every zoo model), on every Keras backend; PNG overlays of each.

>>> from hybrid_keras import explain
>>> projection = explain.deconvnet(model, images, "conv5")          # .pixels [B, H, W, C]
>>> heat = explain.occlusion(model, images, size=8, stride=2)        # .heatmap [B, H, W]
>>> cam = explain.grad_cam(model, images)                            # .heatmap [B, H, W]
>>> explain.explain_images(model, ["cat.jpg"], "out/", method="gradcam")
"""

from hybrid_keras.explain.backward import RULES, RectifiedReLU, rectified_relu, rewire
from hybrid_keras.explain.gradients import compiled, gradient_function, value_and_gradients
from hybrid_keras.explain.methods import (
    GradCAM,
    OcclusionMap,
    Projection,
    deconvnet,
    default_cam_layer,
    grad_cam,
    mean_pixel,
    occlusion,
    select_activations,
)
from hybrid_keras.explain.overlay import METHODS, explain_images, heatmap_overlay, projection_image

__all__ = ["METHODS", "RULES", "GradCAM", "OcclusionMap", "Projection", "RectifiedReLU", "deconvnet",
           "default_cam_layer", "explain_images", "grad_cam", "heatmap_overlay", "mean_pixel", "occlusion",
           "projection_image", "rectified_relu", "rewire", "select_activations", "value_and_gradients", "compiled", "gradient_function"]
