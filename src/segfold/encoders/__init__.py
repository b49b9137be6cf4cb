"""segfold.encoders"""
