"""The model: the library's Unet and GaussianDiffusion built from a config, conditioning, and weights in and out."""
