"""segfold.train"""
