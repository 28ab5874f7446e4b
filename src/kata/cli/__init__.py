"""kata-runtime: the OCI runtime CLI (argument parsing and one small module per verb)."""
