"""segfold.losses"""
