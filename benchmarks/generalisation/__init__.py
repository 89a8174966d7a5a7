"""Experiments from the papers on generalisation and training: memorisation of corrupted
data (Zhang et al. 2017) and batch normalisation's effect on learning rates (Ioffe &
Szegedy 2015). ``corruptions`` and ``curves`` are the small tested pieces they share."""
