// SPDX-License-Identifier: MIT
// Kernel capability probe for the VM matrix, independent of usniff's own BPF code:
// one counter per attachment kind that usniff's backends rely on.  probe.py loads
// one program at a time, sends on a Unix socket and reads the counter.
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} hits SEC(".maps");

static __always_inline int hit(__u32 slot)
{
	__u64 *count = bpf_map_lookup_elem(&hits, &slot);

	if (count)
		__sync_fetch_and_add(count, 1);
	return 0;
}

SEC("fexit/unix_stream_sendmsg")
int fexit_sendmsg(__u64 *ctx) { return hit(0); }

SEC("kretprobe/unix_stream_sendmsg")
int kretprobe_sendmsg(void *ctx) { return hit(1); }

SEC("tp_btf/sock_send_length")
int tp_sock_send_length(__u64 *ctx) { return hit(2); }

SEC("tp_btf/skb_copy_datagram_iovec")
int tp_skb_copy(__u64 *ctx) { return hit(3); }

char LICENSE[] SEC("license") = "GPL";
