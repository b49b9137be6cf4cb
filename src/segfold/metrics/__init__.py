"""segfold.metrics"""
