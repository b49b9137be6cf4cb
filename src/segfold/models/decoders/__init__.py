"""segfold.models.decoders"""
