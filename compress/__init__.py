"""compress: model in -> smaller model out (PyTorch only, no runtime file formats)."""
