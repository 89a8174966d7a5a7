"""Benchmarks of the generative models: sample quality (Frechet distance on a classifier's
features) and memorisation (nearest training images), on MNIST and CIFAR-10 JPEG."""
