"""Generative models and how their samples are judged.

- :mod:`hybrid_keras.generative.autoencoders`: the autoencoder, denoising autoencoder and VAE
  models (their own loss in ``compute_loss``; the VAE's ELBO terms as metrics), the corruption
  and reparameterisation layers, KL warm-up, per-image ELBO and SavedModel export.
- :class:`DCGAN` (:mod:`hybrid_keras.generative.gan`): a generator and a discriminator
  trained against each other by ``fit`` with the DCGAN paper's losses and Adam settings, its
  own ``train_step`` on every backend, seeded noise; :func:`export_generator` writes the
  generator as a SavedModel (``generate(z)``, ``generate_from_seed(seed, count)``).
- :mod:`hybrid_keras.generative.evaluation`: the Frechet distance between two sets of
  features (Heusel et al. 2017), each sample's nearest training image (through
  :class:`hybrid_keras.fanng.FanngIndex`) and a memorisation report that compares those
  distances with the ones of held-out real images. NumPy (FANNG: TensorFlow, imported on use).

The models are written with ``keras`` and ``keras.ops`` only, so they train under the
TensorFlow, JAX and PyTorch backends; their networks come from the zoo (task
"generative"), which this package never imports.
"""

from hybrid_keras.generative.autoencoders import (Autoencoder, Corruption, KLWarmup, Reparameterization,
                                                 VariationalAutoencoder, elbo_per_image, export_autoencoder,
                                                 kl_divergence, reconstruction_nll, ToPixels)
from hybrid_keras.generative.evaluation import frechet_distance, memorisation_report, nearest_training_images
from hybrid_keras.generative.gan import (DCGAN, discriminator_loss, export_generator, generate_images,
                                         generator_loss)

__all__ = ["DCGAN", "discriminator_loss", "export_generator", "generate_images", "generator_loss"]
__all__ += ["Autoencoder", "Corruption", "KLWarmup", "Reparameterization", "VariationalAutoencoder", "elbo_per_image",
           "export_autoencoder", "frechet_distance", "kl_divergence", "memorisation_report", "nearest_training_images",
           "reconstruction_nll", "ToPixels"]
