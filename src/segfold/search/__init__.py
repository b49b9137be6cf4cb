"""segfold.search"""
