"""The capture stage: BPF object, libbpf binding, ring buffer, record assembly, sockets."""
