"""data/: the images, the rows and the folds, and the DataLoaders that feed a fit (numpy and scikit-learn, torch in loaders.py only)."""
