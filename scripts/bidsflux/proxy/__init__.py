"""proxy: the TLS-terminating reverse proxy, certificates and the trust handed to clients."""
