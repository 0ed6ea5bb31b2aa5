/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The only layout shared by the BPF programs and the collector: included by
 * src/usniff/_events.h (so by the C modules _events.c, capture/_records.c and
 * outputs/_epb.c; _records reports the structs' sizes); capture/records.py and
 * capture/collector.py mirror it with struct formats, checked against those
 * sizes at import (keep them in step).
 */
#ifndef __USNIFF_H
#define __USNIFF_H

/* Bytes of payload carried by one ring-buffer record; larger sends are split. */
#define USNIFF_CHUNK 32768
#define USNIFF_ADDR_MAX 108
#define USNIFF_COMM_LEN 16

enum usniff_kind {
	USNIFF_EV_DATA = 1, /* hdr + caplen bytes of payload */
	USNIFF_EV_LOST = 2, /* hdr only: len bytes at offset were sent but not copied */
	USNIFF_EV_SOCK = 3, /* hdr + addr_len bytes: socket first seen; its address */
	USNIFF_EV_DEST = 4, /* hdr + addr_len bytes: destination of the next datagram */
};

enum usniff_flags {
	USNIFF_F_MSG_START = 1,
	USNIFF_F_MSG_END = 2,
	USNIFF_F_TRUNCATED = 4,
	USNIFF_F_ADDR = 8,
	USNIFF_F_UNCOPYABLE = 16, /* LOST because the bytes were not in user memory */
	/* with UNCOPYABLE: LOST because the send had more iovecs and chunks than the copy
	   loop's steps (bounded variant, kernels without bpf_loop: ebpf/usniff.bpf.c) */
	USNIFF_F_COPY_LIMIT = 32,
};

struct usniff_event {
	__u64 ts_ns; /* CLOCK_MONOTONIC */
	__u64 offset; /* first byte's position in the sender's stream */
	__u64 sock_id; /* this capture's id of the sending socket: known from its first byte */
	__u64 peer_id; /* its peer's id; 0 when unconnected */
	__u64 inode; /* sender socket inode */
	__u64 peer_inode; /* 0 when unconnected, or while the peer waits to be accept()ed */
	__u64 cgroup; /* the sender's cgroup v2 id (its directory's inode) */
	__u64 peer_cgroup; /* the peer process's cgroup v2 id; 0 when unknown */
	__u32 pid;
	__u32 tid;
	__u32 uid;
	__u32 peer_pid;
	__u32 len; /* stream bytes covered */
	__u32 caplen; /* payload bytes following this header */
	__u16 kind;
	__u16 flags;
	__u16 sock_type;
	__u16 addr_len; /* EV_SOCK/EV_DEST: address bytes following the header */
	__u8 path_is_own; /* EV_SOCK: the address is the sender's own */
	__u8 _pad[7];
	char comm[USNIFF_COMM_LEN];
	char peer_comm[USNIFF_COMM_LEN]; /* the peer process's name, "" when unknown */
};

/*
 * Per socket (the sockets map, keyed by the struct sock's address): the
 * collector reads pending losses from it at the end of a capture.
 */
struct usniff_sock_state {
	__u64 id; /* usniff_event.sock_id */
	__u64 ino; /* the socket's inode when it was last seen (0: none yet) */
	__u64 offset; /* next stream offset */
	__u64 lost_off; /* pending loss, reported before the next record */
	__u64 lost_len;
	/* header fields read once per peer (a datagram socket may connect again) */
	__u64 peer; /* the peer sock they describe */
	__u64 peer_id;
	__u64 peer_ino;
	__u64 peer_cgroup;
	__u32 peer_pid;
	__u16 sock_type; /* 0 = not read yet */
	__u8 announced; /* EV_SOCK delivered */
	__u8 match; /* 0 = not decided yet, 1 = address/type filter passes, 2 = fails */
	char peer_comm[USNIFF_COMM_LEN];
};

/* Written once by the collector before attaching. */
struct usniff_config {
	__u32 self_pid;
	__u32 snaplen; /* max payload bytes kept per send; 0 = all */
	__u8 filter_path; /* path_filter / name_filter are in force */
	__u8 filter_pid;
	__u8 filter_comm;
	__u8 type_mask; /* bit (1 << sk_type); 0 = every type */
	__u8 filter_cgroup; /* sender's or peer's cgroup id is in cgroup_filter */
	__u8 _pad[3];
	__u32 wake_bytes; /* a CPU's ring output between wakeups of the collector */
	__u32 copy_calls; /* bounded variant: calls of its copy loop per send (0: all; tests lower it) */
};

struct usniff_path_key {
	__u64 dev; /* kernel dev_t: major << 20 | minor */
	__u64 ino;
};

struct usniff_name_key {
	__u32 len;
	char name[USNIFF_ADDR_MAX];
};

enum usniff_stat {
	USNIFF_STAT_RECORDS,
	USNIFF_STAT_BYTES,
	USNIFF_STAT_LOST_RECORDS,
	USNIFF_STAT_LOST_BYTES,
	USNIFF_STAT_MAX,
};

#endif /* __USNIFF_H */
