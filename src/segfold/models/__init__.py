"""segfold.models"""
