"""segfold.package: an offline Kaggle inference package (wheels, weights, infer.py / infer.ipynb) and its kernel."""
