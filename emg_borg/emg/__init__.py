"""The EMG domain: server.cfg, the installation layout and its categories."""
