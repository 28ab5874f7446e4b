"""Guest image builder: the Debian kernel, the initrd with the Python agent, rootfs images."""
