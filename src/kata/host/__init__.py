"""Facts about the host and the checks `kata-runtime check` runs on them."""
