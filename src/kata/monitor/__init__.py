"""kata-monitor: metrics and sandbox listing for the node (not implemented yet)."""
