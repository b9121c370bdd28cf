"""Triton kernels of lsdet, installed as the subpackage ``lsdet.kernels``."""
