"""Triton kernels of mumo_fast (imported as mumo_fast.kernels)."""
