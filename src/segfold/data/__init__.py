"""segfold.data"""
