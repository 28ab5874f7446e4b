"""containerd-shim-kata-v2: the containerd shim v2 (not implemented yet)."""
