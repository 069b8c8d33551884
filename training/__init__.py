"""Training: datasets, balanced batches, the scratch CNN (the seed's three ways),
the comparison head on the pretrained backbone, evaluation, the model registry,
feedback and scheduled retraining.

Importing this package loads nothing heavy; TensorFlow is imported only by the
functions that train or load a model.
"""
