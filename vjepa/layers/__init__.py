"""Transformer building blocks: attention (SDPA / xformers), block, tubelet embedding, 3D positions."""
