"""Images: pre-processing as a model expects it, calibration image sets drawn from folders, the
ImageNet class index."""
