"""The single-object tracking benchmark (OTB protocol): sequences with exact ground truth over real
photos (``sequence_set``), OpenCV peers behind the benchmark's tracker protocol (``peers``), and the
one-pass evaluation, its table and plots (``evaluate``)."""
