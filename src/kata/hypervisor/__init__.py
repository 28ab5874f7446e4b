"""Hypervisor layer: one interface, drivers behind it (QEMU first), accelerator selection."""
