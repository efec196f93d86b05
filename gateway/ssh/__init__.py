"""Reaching hosts over SSH (asyncssh): shared connections, host-key pinning, forwards."""
