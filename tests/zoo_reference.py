"""Helpers for the zoo equivalence tests: write reference weights the way each
publisher ships them, with non-trivial batch-norm statistics so BN mapping errors show."""

import h5py
import keras
import numpy as np


def randomise_keras_batchnorm(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.uniform(-0.2, 0.2, beta.shape),
                               rng.uniform(-0.5, 0.5, mean.shape), rng.uniform(0.5, 2.0, var.shape)])


def save_keras_applications_h5(model, path):
    """The legacy HDF5 layout keras.applications' published .h5 files use (layer_names / weight_names)."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path


def randomise_torch_batchnorm(module, seed=0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    for sub in module.modules():
        if isinstance(sub, torch.nn.BatchNorm2d):
            sub.running_mean.copy_(torch.rand(sub.running_mean.shape, generator=generator) - 0.5)
            sub.running_var.copy_(torch.rand(sub.running_var.shape, generator=generator) * 1.5 + 0.5)
            sub.weight.data.copy_(torch.rand(sub.weight.shape, generator=generator) + 0.5)
            sub.bias.data.copy_(torch.rand(sub.bias.shape, generator=generator) * 0.4 - 0.2)


def torch_logits(module, images_nhwc):
    import torch

    module.eval()
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))).numpy()
