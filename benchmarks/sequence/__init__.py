"""Recurrent sequence models: character language models on the standard library, and the vanishing gradient."""
