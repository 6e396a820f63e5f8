"""Device kernels: attention backends, paged KV memory and fused ops, each with a torch reference.
"""
