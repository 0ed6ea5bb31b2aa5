"""The command line: the click CLI, the capture loop, `usniff read` and the Wireshark extcap."""
