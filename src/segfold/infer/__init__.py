"""segfold.infer"""
