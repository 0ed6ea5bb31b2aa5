// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * usniff: copy the bytes sent over AF_UNIX sockets into a ring buffer.
 *
 * Three backends share one copy engine (emit_send):
 *   fentry/fexit and kprobe/kretprobe on unix_{stream,dgram}_sendmsg, which
 *   stash the msghdr's iov_iter at entry and copy at exit;
 *   tracepoint (>= 6.3): tp_btf/sock_send_length hands over the socket and
 *   the byte count, the syscall's saved registers the user buffers, and
 *   the receiver's tp_btf/skb_copy_datagram_iovec what the send's stamp needs.
 * The collector enables the programs of one backend (autoload) before load.
 *
 * The fentry (and kprobe) backends come in two variants of the same code, picked
 * by the collector from what the kernel offers (helper and map probes):
 *   the loop variant copies with bpf_loop (>= 5.17), stashes in task storage
 *   and reserves offsets with an atomic fetch-add (>= 5.12);
 *   the bounded variant (programs named *_bounded, for 5.8 - 5.16) copies with
 *   bounded loops (COPY_STEPS steps per send at most: the rest is an explicit
 *   loss), stashes in a hash keyed by pid_tgid and reserves offsets under a
 *   per-socket lock (a hash insert).
 * A program that passes a callback to bpf_loop does not load on a kernel
 * without it, even if the call is never reached, so the variants are
 * separate programs (a constant `bounded` argument to inlined code).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "usniff.h"

#define AF_UNIX 1
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define MAX_SEGS 1024 /* UIO_MAXIOV */

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 << 20); /* --buffer-size overrides before load */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct usniff_config);
} cfg_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct usniff_path_key);
	__type(value, __u8);
} path_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct usniff_name_key);
	__type(value, __u8);
} name_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u8);
} pid_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, char[USNIFF_COMM_LEN]);
	__type(value, __u8);
} comm_filter SEC(".maps");

/* cgroup v2 ids (--cgroup, --container): the cgroups and their descendants */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} cgroup_filter SEC(".maps");

/*
 * Keyed by the struct sock's address, not its inode: a client may send before
 * the server accept()s, when the server's socket has no inode yet but is
 * already the peer (sock_state).
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct usniff_sock_state);
} sockets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, USNIFF_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* What a send reads its bytes from: one buffer, or an array of iovecs. */
struct send_src {
	__u64 start_ns; /* when the send began: orders records across sockets */
	__u64 sk; /* expected socket (0 = any) */
	__u64 iov; /* user iovec array, 0 for a single buffer */
	__u64 base; /* single buffer, or skip into the first iovec */
	__u64 count; /* single buffer length */
	__u64 nr_segs;
	__u64 name; /* destination sockaddr_un (user or kernel pointer) */
	__u32 name_len;
	__u8 name_user;
	__u8 copyable; /* 0: bytes are not in user memory (kvec, bvec...) */
	__u8 iov_kernel; /* the iovec array is the kernel's copy (msg_iter) */
	__u64 ino; /* tracepoint backend: sk's inode, already looked up (0: unknown) */
};

/*
 * The send in progress of each task, from its entry hook to its exit hook
 * (sk == 0: none).  Task storage rather than a hash keyed by tid: the entry
 * is found through the task itself, with no bucket lock, and is reused by the
 * task's next send instead of being deleted and inserted again (the hash's
 * update and delete were a visible share of the sender's CPU; figures in
 * docs/performance.md).
 */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct send_src);
} stash SEC(".maps");

/*
 * The bounded variant's stash: kernels before task storage for tracing
 * programs.  An LRU hash, so that the entries of threads that exited between
 * entry and exit (or whose kretprobe was missed) cannot fill it.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct send_src);
} stash_tid SEC(".maps");

static __always_inline struct send_src *stash_get(__u64 flags)
{
	return bpf_task_storage_get(&stash, bpf_get_current_task_btf(), 0, flags);
}

/* This task's send in progress (taken out of the stash), or NULL. */
static __always_inline struct send_src *stashed(struct send_src *out, const int bounded)
{
	struct send_src *p;
	__u64 tid;

	if (bounded) {
		tid = bpf_get_current_pid_tgid();
		p = bpf_map_lookup_elem(&stash_tid, &tid);
		if (!p)
			return NULL;
		*out = *p;
		bpf_map_delete_elem(&stash_tid, &tid);
		return out->sk ? out : NULL;
	}
	p = stash_get(0);
	if (!p || !p->sk)
		return NULL;
	*out = *p;
	p->sk = 0;
	return out;
}

static __always_inline void stash_put(const struct send_src *src, const int bounded)
{
	struct send_src *p;
	__u64 tid;

	if (bounded) {
		tid = bpf_get_current_pid_tgid();
		bpf_map_update_elem(&stash_tid, &tid, src, BPF_ANY);
		return;
	}
	p = stash_get(BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (p)
		*p = *src;
}

/*
 * State of one send being copied.  It lives in a map value, not on the stack:
 * the verifier then treats its fields as unknown and checks the bpf_loop
 * callback once, instead of once per distinct constant it could track.
 */
struct copy_ctx {
	__u64 iov;
	__u64 seg_base;
	__u64 seg_left;
	__u64 left; /* stream bytes of this send not yet put in a record */
	__u64 cap_left; /* bytes we may still copy (snap length) */
	__u64 offset; /* stream offset of the record being built */
	__u64 key; /* the sockets map key of the sending socket */
	__u32 seg_idx;
	__u32 nr_segs;
	__u32 fill; /* payload bytes in the scratch record */
	__u32 rec_len; /* stream bytes the scratch record covers */
	__u16 first;
	__u16 iov_kernel;
};

struct scratch {
	struct copy_ctx c;
	__u64 unwoken; /* bytes this CPU put in the ring since it last woke the collector */
	struct usniff_event lost; /* output_record's pending loss: too big for the bounded stack */
	struct usniff_event hdr; /* the record: hdr and data are output as one */
	/* twice the chunk: lets the verifier bound "fill + n" without a proof */
	char data[2 * USNIFF_CHUNK];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1); /* set to the number of possible CPUs before load */
	__type(key, __u32);
	__type(value, struct scratch);
} scratch_map SEC(".maps");

/* flavours for CO-RE field checks across kernel versions */
struct iov_iter___old {
	unsigned int type; /* < 5.14: direction bit | iter type bit */
	const struct iovec *iov; /* < 6.4 */
};

/* the newer fields, named here so that the object compiles against older BTF too */
struct iov_iter___new {
	__u8 iter_type; /* >= 5.14 */
	const struct iovec *__iov; /* >= 6.4 */
};

enum iter_type___ubuf {
	ITER_UBUF___ubuf, /* >= 6.0; the value is relocated from the kernel's BTF */
};

static __always_inline void stat_add(__u32 idx, __u64 v)
{
	__u64 *p = bpf_map_lookup_elem(&stats, &idx);

	if (p)
		*p += v;
}

static __always_inline __u64 sock_ino(struct sock *sk)
{
	struct socket *sock = BPF_CORE_READ(sk, sk_socket);
	struct socket_alloc *sa = container_of(sock, struct socket_alloc, socket);

	if (!sock)
		return 0;
	return BPF_CORE_READ(sa, vfs_inode.i_ino);
}

static __always_inline int path_matches(struct sock *sk)
{
	struct unix_sock *u = (struct unix_sock *)sk;
	struct dentry *d = BPF_CORE_READ(u, path.dentry);
	struct usniff_path_key pk = {};
	struct usniff_name_key nk = {};
	struct unix_address *addr;
	int len;

	if (d) {
		pk.ino = BPF_CORE_READ(d, d_inode, i_ino);
		pk.dev = BPF_CORE_READ(d, d_sb, s_dev);
		if (bpf_map_lookup_elem(&path_filter, &pk))
			return 1;
	}
	addr = BPF_CORE_READ(u, addr);
	if (!addr)
		return 0;
	len = BPF_CORE_READ(addr, len) - 2;
	if (len <= 0 || len > USNIFF_ADDR_MAX)
		return 0;
	nk.len = len;
	bpf_probe_read_kernel(nk.name, len & 127, &addr->name[0].sun_path);
	return bpf_map_lookup_elem(&name_filter, &nk) != NULL;
}

/* Address/type part of the filter: fixed for a socket's life, so cached. */
static __always_inline int sock_matches(struct sock *sk, struct usniff_config *cfg)
{
	__u16 type = BPF_CORE_READ(sk, sk_type);
	struct sock *peer;

	if (cfg->type_mask && !(cfg->type_mask & (1 << (type & 7))))
		return 0;
	if (!cfg->filter_path)
		return 1;
	if (path_matches(sk))
		return 1;
	peer = BPF_CORE_READ((struct unix_sock *)sk, peer);
	return peer && path_matches(peer);
}

static __always_inline __u32 pid_nr(struct pid *p)
{
	if (!p)
		return 0;
	return BPF_CORE_READ(p, numbers[0].nr);
}

/* Per-send part of the filter: who is sending (or receiving), by pid, cgroup and comm. */
static __always_inline int task_matches(struct usniff_config *cfg, __u32 pid, __u32 ppid, __u64 cg,
					__u64 pcg)
{
	char comm[USNIFF_COMM_LEN] = {};

	if (pid == cfg->self_pid || (ppid && ppid == cfg->self_pid))
		return 0;
	if (cfg->filter_pid && !bpf_map_lookup_elem(&pid_filter, &pid) &&
	    !(ppid && bpf_map_lookup_elem(&pid_filter, &ppid)))
		return 0;
	if (cfg->filter_cgroup && !bpf_map_lookup_elem(&cgroup_filter, &cg) &&
	    !(pcg && bpf_map_lookup_elem(&cgroup_filter, &pcg)))
		return 0;
	if (cfg->filter_comm) {
		bpf_get_current_comm(comm, sizeof(comm));
		if (!bpf_map_lookup_elem(&comm_filter, comm))
			return 0;
	}
	return 1;
}

/* Next socket id of this capture (usniff_event.sock_id); 0 means "none". */
__u64 next_id = 1;

/*
 * The bounded variant has no atomic fetch-add (BPF_FETCH, 5.12): socket ids
 * are counted per CPU instead, the CPU number in their low ID_CPU_BITS
 * (unique as long as CPU numbers fit: NR_CPUS is at most 8192).
 */
#define ID_CPU_BITS 13
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} cpu_ids SEC(".maps");

static __always_inline __u64 new_sock_id(const int bounded)
{
	__u32 zero = 0;
	__u64 *n;

	if (!bounded)
		return __sync_fetch_and_add(&next_id, 1);
	n = bpf_map_lookup_elem(&cpu_ids, &zero);
	if (!n)
		return 0;
	*n += 1;
	return *n << ID_CPU_BITS | (bpf_get_smp_processor_id() & ((1 << ID_CPU_BITS) - 1));
}

/*
 * The bounded variant's offset reservation: the socket's offset is read and
 * advanced by one sender at a time, the one whose insert of the sock's key
 * succeeded (a bucket lock in the kernel; tracing programs may not take a
 * bpf_spin_lock).  The holder keeps it for a few instructions, but its CPU may
 * stall (an interrupt, or a hypervisor running another vCPU: 128 tries were
 * not enough in a loaded QEMU guest, 8 threads sending on one socket), so a
 * sender waits with lockless lookups, LOCK_SPINS per call of a global
 * function (verified once), up to LOCK_CALLS calls.  After that the send
 * advances the offset without learning where its bytes are, and is counted as
 * lost (the collector sees the hole and the kernel's loss count).
 */
#define LOCK_SPINS 64
#define LOCK_CALLS 2048
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} offset_locks SEC(".maps");

/*
 * The state of socket sk, whose inode is ino (0 while it waits in a
 * listener's queue), created with a new id on first sight.  The map is keyed
 * by the sock's address, which the slab reuses once the socket is freed: an
 * entry whose inode differs from sk's (a socket seen with an inode cannot
 * lose it) belonged to a socket that is gone, and starts afresh.  An entry
 * first made for a queued peer takes its inode when accept() gave it one.
 */
static __always_inline struct usniff_sock_state *sock_state(struct sock *sk, __u64 ino,
							 const int bounded)
{
	struct usniff_sock_state *st, fresh = {};
	__u64 key = (__u64)sk;

	st = bpf_map_lookup_elem(&sockets, &key);
	if (st) {
		if (st->ino == ino)
			return st;
		if (!st->ino) {
			st->ino = ino;
			return st;
		}
	}
	fresh.id = new_sock_id(bounded);
	fresh.ino = ino;
	/* two CPUs meeting a new socket at once: one entry wins, both use it */
	bpf_map_update_elem(&sockets, &key, &fresh, st ? BPF_ANY : BPF_NOEXIST);
	return bpf_map_lookup_elem(&sockets, &key);
}

/* The thread group leader of the process whose pid p is; NULL once it has exited. */
static __always_inline struct task_struct *pid_leader(struct pid *p)
{
	struct hlist_node *first;

	if (!p)
		return NULL;
	first = BPF_CORE_READ(p, tasks[PIDTYPE_TGID].first);
	if (!first)
		return NULL;
	return (void *)first - bpf_core_field_offset(struct task_struct, pid_links) -
	       PIDTYPE_TGID * sizeof(struct hlist_node);
}

/*
 * The cgroup v2 id of task t.  One variable for every hop: BPF_CORE_READ's
 * temporaries, inlined into the bounded exit programs, took them past the
 * 512-byte stack on 5.10 ("combined stack size of 3 calls is 544").
 */
static __always_inline __u64 task_cgroup(struct task_struct *t)
{
	void *p = NULL;
	__u64 id = 0;

	bpf_core_read(&p, sizeof(p), &t->cgroups);
	if (p)
		bpf_core_read(&p, sizeof(p), &((struct css_set *)p)->dfl_cgrp);
	if (p)
		bpf_core_read(&p, sizeof(p), &((struct cgroup *)p)->kn);
	if (p)
		bpf_core_read(&id, sizeof(id), &((struct kernfs_node *)p)->id);
	return id;
}

/*
 * Fill st's cached header fields.  A connected stream or seqpacket socket
 * keeps its peer for life; a datagram socket's may change with connect().
 * The peer has an id from the start, but no inode while it waits in the
 * listener's queue (a client may send before accept()), so that is looked
 * up again until found.
 */
static __always_inline void cache_peer(struct usniff_sock_state *st, struct sock *sk,
				       const int bounded)
{
	struct usniff_sock_state *ps;
	struct task_struct *pt;
	struct sock *peer;
	struct pid *pp;

	if (st->peer_ino && st->sock_type != SOCK_DGRAM)
		return;
	peer = BPF_CORE_READ((struct unix_sock *)sk, peer);
	if (st->sock_type && st->peer == (__u64)peer && (st->peer_ino || !peer))
		return;
	st->peer_ino = peer ? sock_ino(peer) : 0;
	if (!st->sock_type || st->peer != (__u64)peer) {
		st->peer = (__u64)peer;
		st->peer_id = 0;
		ps = peer ? sock_state(peer, st->peer_ino, bounded) : NULL;
		if (ps)
			st->peer_id = ps->id;
		pp = BPF_CORE_READ(sk, sk_peer_pid);
		st->peer_pid = pid_nr(pp);
		__builtin_memset(st->peer_comm, 0, sizeof(st->peer_comm));
		st->peer_cgroup = 0;
		pt = pid_leader(pp);
		if (pt) {
			bpf_probe_read_kernel_str(st->peer_comm, USNIFF_COMM_LEN, &pt->comm);
			st->peer_cgroup = task_cgroup(pt);
		}
		st->sock_type = BPF_CORE_READ(sk, sk_type);
	}
}

/*
 * The sender's ids and comm are loaded straight from its task_struct rather
 * than through three helpers: on this machine every kernel return goes
 * through a thunk (SRSO "Safe RET"), so each helper call is dear.  task is
 * NULL in the bounded variant (no bpf_get_current_task_btf before 5.11): the
 * helpers then.
 */
static __always_inline void fill_hdr(struct usniff_event *h, struct usniff_sock_state *st, __u64 ino,
				     __u16 kind, __u64 ts, struct task_struct *task)
{
	__u64 id;

	h->ts_ns = ts ? ts : bpf_ktime_get_ns();
	h->sock_id = st->id;
	h->peer_id = st->peer_id;
	h->inode = ino;
	h->peer_inode = st->peer_ino;
	h->peer_cgroup = st->peer_cgroup; /* h->cgroup: set by the caller */
	if (task) {
		h->pid = task->tgid;
		h->tid = task->pid;
		h->uid = task->cred->uid.val;
		__builtin_memcpy(h->comm, task->comm, sizeof(h->comm));
	} else {
		id = bpf_get_current_pid_tgid();
		h->pid = id >> 32;
		h->tid = (__u32)id;
		h->uid = (__u32)bpf_get_current_uid_gid();
		bpf_get_current_comm(h->comm, sizeof(h->comm));
	}
	h->peer_pid = st->peer_pid;
	h->kind = kind;
	h->flags = 0;
	h->sock_type = st->sock_type;
	h->addr_len = 0;
	h->path_is_own = 0;
	h->len = 0;
	h->caplen = 0;
	h->offset = 0;
	__builtin_memcpy(h->peer_comm, st->peer_comm, sizeof(h->peer_comm));
}

/*
 * Wake the collector only after this CPU has added cfg->wake_bytes to the
 * ring (an eighth of it, shared among the CPUs): it also polls every POLL
 * seconds (capture.py; records wait as long for reordering anyway), so the
 * default wakeup whenever it has caught up would only add an irq_work and a
 * context switch to the traced sender.  Counted per CPU rather than asking
 * the ring how full it is: BPF_RB_AVAIL_DATA reads the producer and consumer
 * positions, cache lines that the other CPUs and the collector keep writing.
 */
static __always_inline __u64 wake_flag(struct scratch *s, __u64 size)
{
	__u32 zero = 0;
	struct usniff_config *cfg = bpf_map_lookup_elem(&cfg_map, &zero);

	s->unwoken += size;
	if (cfg && s->unwoken >= cfg->wake_bytes) {
		s->unwoken = 0;
		return BPF_RB_FORCE_WAKEUP;
	}
	return BPF_RB_NO_WAKEUP;
}

static __always_inline long ring_output(struct scratch *s, void *data, __u64 size)
{
	return bpf_ringbuf_output(&events, data, size, wake_flag(s, size));
}

/* EV_SOCK: the socket's own address if bound, else its peer's. */
static __always_inline int announce(struct scratch *s, struct sock *sk)
{
	struct unix_address *addr = BPF_CORE_READ((struct unix_sock *)sk, addr);
	struct sock *peer;
	int len;

	s->hdr.kind = USNIFF_EV_SOCK;
	s->hdr.path_is_own = addr != NULL;
	if (!addr) {
		peer = BPF_CORE_READ((struct unix_sock *)sk, peer);
		if (peer)
			addr = BPF_CORE_READ((struct unix_sock *)peer, addr);
	}
	len = addr ? BPF_CORE_READ(addr, len) - 2 : 0;
	if (len < 0 || len > USNIFF_ADDR_MAX)
		len = 0;
	if (len)
		bpf_probe_read_kernel(s->data, len & 127, &addr->name[0].sun_path);
	s->hdr.addr_len = len;
	return ring_output(s, &s->hdr, sizeof(s->hdr) + (len & 127));
}

static __always_inline struct scratch *get_scratch(void)
{
	__u32 cpu = bpf_get_smp_processor_id();

	return bpf_map_lookup_elem(&scratch_map, &cpu);
}

/* Ring-buffer output with loss accounting; pending losses go first. */
static __always_inline void count_record(__u64 len)
{
	stat_add(USNIFF_STAT_RECORDS, 1);
	stat_add(USNIFF_STAT_BYTES, len);
}

static __always_inline void output_record(struct scratch *s, struct usniff_sock_state *st)
{
	struct usniff_event *lost = &s->lost;
	__u32 size = sizeof(s->hdr) + (s->hdr.caplen & (2 * USNIFF_CHUNK - 1));

	if (st->lost_len) {
		__builtin_memcpy(lost, &s->hdr, sizeof(*lost));
		lost->kind = USNIFF_EV_LOST;
		lost->flags = 0;
		lost->offset = st->lost_off;
		lost->len = st->lost_len;
		lost->caplen = 0;
		if (ring_output(s, lost, sizeof(*lost)))
			goto lose;
		st->lost_len = 0;
	}
	if (s->hdr.kind == USNIFF_EV_LOST)
		size = sizeof(s->hdr);
	if (ring_output(s, &s->hdr, size))
		goto lose;
	count_record(s->hdr.len);
	return;
lose:
	if (!st->lost_len)
		st->lost_off = s->hdr.offset;
	st->lost_len += s->hdr.len;
	stat_add(USNIFF_STAT_LOST_RECORDS, 1);
	stat_add(USNIFF_STAT_LOST_BYTES, s->hdr.len);
}

/* h: the data record of the send's next len stream bytes (caplen of them copied) */
static __always_inline void data_hdr(struct usniff_event *h, struct copy_ctx *c, __u32 len,
				     __u32 caplen, __u16 last)
{
	h->kind = USNIFF_EV_DATA;
	h->offset = c->offset;
	h->len = len;
	h->caplen = caplen;
	h->flags = (c->first ? USNIFF_F_MSG_START : 0) | (last ? USNIFF_F_MSG_END : 0) |
		   (caplen < len ? USNIFF_F_TRUNCATED : 0);
	c->offset += len;
	c->first = 0;
}

static __always_inline void output_chunk(struct copy_ctx *c, struct scratch *s,
					 struct usniff_sock_state *st, __u16 last)
{
	data_hdr(&s->hdr, c, c->rec_len, c->fill, last);
	output_record(s, st);
	c->fill = 0;
	c->rec_len = 0;
}

static __always_inline void flush_chunk(struct copy_ctx *c, struct scratch *s, __u16 last)
{
	struct usniff_sock_state *st = bpf_map_lookup_elem(&sockets, &c->key);

	if (st)
		output_chunk(c, s, st, last);
}

struct chunk_record {
	struct usniff_event hdr;
	char data[USNIFF_CHUNK];
};

/*
 * A whole chunk from one user segment goes straight into the ring (reserve,
 * read, submit) instead of through the scratch record, which bpf_ringbuf_output
 * would copy once more.  Returns 0 if done; else the caller copies through the
 * scratch record, whose failure paths report losses and unreadable memory.
 */
static __always_inline int direct_chunk(struct copy_ctx *c, struct scratch *s)
{
	struct usniff_sock_state *st = bpf_map_lookup_elem(&sockets, &c->key);
	struct chunk_record *r;

	if (!st || st->lost_len) /* a pending loss is reported first, by output_record */
		return -1;
	r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r)
		return -1;
	if (bpf_probe_read_user(r->data, USNIFF_CHUNK, (void *)c->seg_base)) {
		bpf_ringbuf_discard(r, BPF_RB_NO_WAKEUP);
		return -1;
	}
	__builtin_memcpy(&r->hdr, &s->hdr, sizeof(r->hdr));
	data_hdr(&r->hdr, c, USNIFF_CHUNK, USNIFF_CHUNK, c->left == USNIFF_CHUNK);
	bpf_ringbuf_submit(r, wake_flag(s, sizeof(*r)));
	count_record(USNIFF_CHUNK);
	c->seg_base += USNIFF_CHUNK;
	c->seg_left -= USNIFF_CHUNK;
	c->left -= USNIFF_CHUNK;
	c->cap_left -= USNIFF_CHUNK;
	return 0;
}

/* iov_base always points to user memory; the array itself may be the kernel's */
static __always_inline long read_iovec(struct iovec *seg, __u64 addr, int kernel)
{
	if (kernel)
		return bpf_probe_read_kernel(seg, sizeof(*seg), (void *)addr);
	return bpf_probe_read_user(seg, sizeof(*seg), (void *)addr);
}

/* Keep what was copied; report the rest of the send as lost (flags say why), never invent. */
static __always_inline void lose_rest(struct copy_ctx *c, struct scratch *s, __u16 flags)
{
	struct usniff_sock_state *st;

	if (c->rec_len)
		flush_chunk(c, s, 0);
	c->rec_len = c->left;
	c->left = 0;
	s->hdr.kind = USNIFF_EV_LOST;
	s->hdr.offset = c->offset;
	s->hdr.len = c->rec_len;
	s->hdr.caplen = 0;
	s->hdr.flags = flags;
	st = bpf_map_lookup_elem(&sockets, &c->key);
	if (st)
		output_record(s, st);
}

static long copy_step(__u64 i, void *arg)
{
	struct scratch *s = get_scratch();
	struct copy_ctx *c;
	struct iovec seg;
	__u64 n;
	__u32 fill;

	if (!s)
		return 1;
	c = &s->c;
	if (!c->left) {
		if (c->rec_len) /* else the last chunk was flushed full */
			flush_chunk(c, s, 1);
		return 1;
	}
	if (!c->cap_left) { /* snap length reached: the rest is counted, not copied */
		c->rec_len += c->left;
		c->left = 0;
		flush_chunk(c, s, 1);
		return 1;
	}
	if (!c->seg_left) {
		if (!c->iov || c->seg_idx >= c->nr_segs || c->seg_idx >= MAX_SEGS)
			goto unreadable;
		if (read_iovec(&seg, c->iov + c->seg_idx * sizeof(seg), c->iov_kernel))
			goto unreadable;
		c->seg_idx++;
		c->seg_base = (__u64)seg.iov_base;
		c->seg_left = seg.iov_len;
		return 0;
	}
	if (!c->fill && c->seg_left >= USNIFF_CHUNK && c->left >= USNIFF_CHUNK &&
	    c->cap_left >= USNIFF_CHUNK && !direct_chunk(c, s))
		return 0;
	n = c->seg_left;
	if (n > c->left)
		n = c->left;
	if (n > c->cap_left)
		n = c->cap_left;
	if (n > USNIFF_CHUNK - c->fill)
		n = USNIFF_CHUNK - c->fill;
	fill = c->fill & (USNIFF_CHUNK - 1);
	if (n > USNIFF_CHUNK)
		n = USNIFF_CHUNK;
	if (bpf_probe_read_user(&s->data[fill], n, (void *)c->seg_base))
		goto unreadable;
	c->fill += n;
	c->rec_len += n;
	c->seg_base += n;
	c->seg_left -= n;
	c->left -= n;
	c->cap_left -= n;
	if (c->fill >= USNIFF_CHUNK)
		flush_chunk(c, s, !c->left);
	return 0;

unreadable:
	lose_rest(c, s, USNIFF_F_UNCOPYABLE);
	return 1;
}

/*
 * The bounded variant's copy loop: COPY_STEPS_PER_CALL steps in a global
 * function, which the verifier checks once (not once per call), called up to
 * COPY_CALLS times.  COPY_STEPS = COPY_STEPS_PER_CALL * COPY_CALLS steps per
 * send: a step copies up to a chunk (32 KiB) or opens an iovec, so a send of
 * one buffer is copied whole up to COPY_STEPS chunks (256 MiB), a writev of
 * n segments up to COPY_STEPS - n chunks.  What is left after that is
 * reported as lost (USNIFF_F_COPY_LIMIT), never silently cut.
 */
#define COPY_STEPS_PER_CALL 16
#define COPY_CALLS 512
#define COPY_STEPS (COPY_STEPS_PER_CALL * COPY_CALLS)

__noinline int copy_steps(void)
{
	for (__u32 i = 0; i < COPY_STEPS_PER_CALL; i++)
		if (copy_step(i, NULL))
			return 1;
	return 0;
}

static __always_inline void copy_bounded(struct usniff_config *cfg)
{
	__u32 calls = cfg->copy_calls ? cfg->copy_calls : COPY_CALLS;
	struct scratch *s;

	for (__u32 i = 0; i < COPY_CALLS && i < calls; i++)
		if (copy_steps())
			return;
	s = get_scratch();
	if (!s)
		return;
	if (s->c.left)
		lose_rest(&s->c, s, USNIFF_F_UNCOPYABLE | USNIFF_F_COPY_LIMIT);
	else if (s->c.rec_len) /* the last bytes were copied, not yet sent */
		flush_chunk(&s->c, s, 1);
}

/* c->offset = where the send's `sent` bytes go (see offset_locks); 0 when they are lost instead. */
/* Take the offset lock of the sock whose key this is: 1 if taken within LOCK_SPINS looks. */
__noinline int offset_lock(__u64 key)
{
	__u8 one = 1;

	for (int i = 0; i < LOCK_SPINS; i++) {
		if (bpf_map_lookup_elem(&offset_locks, &key))
			continue; /* held: wait without the bucket lock an insert takes */
		if (!bpf_map_update_elem(&offset_locks, &key, &one, BPF_NOEXIST))
			return 1;
	}
	return 0;
}

static __always_inline int reserve_offset(struct copy_ctx *c, struct usniff_sock_state *st, __u64 sent)
{
	for (int i = 0; i < LOCK_CALLS; i++) {
		if (offset_lock(c->key)) {
			c->offset = st->offset;
			__sync_fetch_and_add(&st->offset, sent); /* not fetched: an XADD, as on 5.8 */
			bpf_map_delete_elem(&offset_locks, &c->key);
			return 1;
		}
	}
	__sync_fetch_and_add(&st->offset, sent);
	stat_add(USNIFF_STAT_LOST_RECORDS, 1);
	stat_add(USNIFF_STAT_LOST_BYTES, sent);
	return 0;
}

/* The destination's sun_path bytes (user or kernel memory) into buf; 0 if none. */
static __always_inline __u32 read_dest(struct send_src *src, char *buf)
{
	__u32 len = src->name_len;

	if (len <= 2 || len > 2 + USNIFF_ADDR_MAX)
		return 0;
	len -= 2;
	if (src->name_user)
		bpf_probe_read_user(buf, len & 127, (void *)(src->name + 2));
	else
		bpf_probe_read_kernel(buf, len & 127, (void *)(src->name + 2));
	return len;
}

static __always_inline void emit_dest(struct scratch *s, struct send_src *src)
{
	__u32 len = read_dest(src, s->data);

	if (!len)
		return;
	s->hdr.kind = USNIFF_EV_DEST;
	s->hdr.addr_len = len;
	ring_output(s, &s->hdr, sizeof(s->hdr) + (len & 127));
}

static __always_inline int dest_matches(struct send_src *src)
{
	struct usniff_name_key nk = {};
	__u32 len = read_dest(src, nk.name);

	if (!len)
		return 0;
	/* pathnames are NUL-terminated in sun_path; the key holds the bytes before it */
	if (nk.name[0]) {
		for (int i = 0; i < USNIFF_ADDR_MAX; i++) {
			if (i >= len || !nk.name[i]) {
				len = i;
				break;
			}
		}
	}
	nk.len = len;
	return bpf_map_lookup_elem(&name_filter, &nk) != NULL;
}

/* emit_send's verdict: SEND_REJECTED for every send of a socket whose address or type the filter rejects */
enum { SEND_OTHER, SEND_REJECTED };

/* Copy `sent` bytes (the send's return value) described by src; bounded: see the file's head. */
static __always_inline int emit_send_as(struct sock *sk, long sent, struct send_src *src,
					const int bounded)
{
	__u32 zero = 0;
	struct usniff_config *cfg = bpf_map_lookup_elem(&cfg_map, &zero);
	struct usniff_sock_state *st;
	struct task_struct *task;
	struct copy_ctx *c;
	struct scratch *s;
	__u64 ino;
	__u8 match;

	if (!cfg || sent <= 0 || !sk)
		return 0;
	ino = src->ino; /* known to be an AF_UNIX socket's */
	if (!ino) {
		if (BPF_CORE_READ(sk, __sk_common.skc_family) != AF_UNIX)
			return 0;
		ino = sock_ino(sk);
		if (!ino)
			return 0;
	}
	st = sock_state(sk, ino, bounded);
	if (!st)
		return 0;
	match = st->match;
	if (!match)
		st->match = match = sock_matches(sk, cfg) ? 1 : 2;
	if (match != 1 && !(src->name_len && cfg->filter_path && dest_matches(src)))
		return SEND_REJECTED;
	cache_peer(st, sk, bounded);
	task = bounded ? NULL : bpf_get_current_task_btf();
	s = get_scratch();
	if (!s)
		return 0;
	/* in the scratch header rather than a local: the bounded variant's stack is full */
	s->hdr.cgroup = task ? task->cgroups->dfl_cgrp->kn->id : bpf_get_current_cgroup_id();
	if (!task_matches(cfg, task ? task->tgid : bpf_get_current_pid_tgid() >> 32, st->peer_pid,
			  s->hdr.cgroup, st->peer_cgroup))
		return 0;

	/*
	 * The stamp comes with src (entry hooks: the send's start; tracepoint:
	 * send_stamp), never from this program's own clock when it has one: the
	 * peer may be woken, answer and be recorded before this program runs.
	 */
	fill_hdr(&s->hdr, st, ino, USNIFF_EV_DATA, src->start_ns, task);
	if (!st->announced && !announce(s, sk))
		st->announced = 1;
	if (src->name_len)
		emit_dest(s, src);

	c = &s->c;
	__builtin_memset(c, 0, sizeof(*c));
	c->key = (__u64)sk;
	if (!bounded)
		c->offset = __sync_fetch_and_add(&st->offset, sent);
	else if (!reserve_offset(c, st, sent))
		return 0;
	c->left = sent;
	c->cap_left = cfg->snaplen ? cfg->snaplen : sent;
	c->first = 1;
	if (!src->copyable) {
		/* no segments: copy_step reports the whole send as uncopyable */
	} else if (src->iov) {
		c->iov = src->iov;
		c->nr_segs = src->nr_segs;
		c->iov_kernel = src->iov_kernel;
		/* the first iovec may be partly consumed already (iov_offset) */
		if (src->base && c->nr_segs) {
			struct iovec seg;

			if (!read_iovec(&seg, c->iov, src->iov_kernel)) {
				c->seg_idx = 1;
				c->seg_base = (__u64)seg.iov_base + src->base;
				c->seg_left = seg.iov_len > src->base ? seg.iov_len - src->base : 0;
			}
		}
	} else {
		c->seg_base = src->base;
		c->seg_left = src->count;
		/*
		 * Most sends are one buffer that fits one record: copy it here
		 * rather than through bpf_loop, whose call and callback cost
		 * more than the copy of a small send.
		 * A failed read falls through to the loop, which reports it.
		 */
		if (sent < USNIFF_CHUNK && c->seg_left >= sent && c->cap_left >= sent &&
		    !bpf_probe_read_user(s->data, sent & (USNIFF_CHUNK - 1), (void *)c->seg_base)) {
			c->fill = sent;
			c->rec_len = sent;
			c->left = 0;
			output_chunk(c, s, st, 1);
			return 0;
		}
	}
	if (bounded) {
		copy_bounded(cfg);
		return 0;
	}
	/* each step copies up to a chunk or opens an iovec; worst case both per chunk */
	bpf_loop(2 * ((__u64)sent / USNIFF_CHUNK) + 2 * src->nr_segs + 4, copy_step, NULL, 0);
	return 0;
}

static __always_inline int emit_send(struct sock *sk, long sent, struct send_src *src)
{
	return emit_send_as(sk, sent, src, 0);
}

/* ---------------------------------------------------------------- tracepoint */

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

/*
 * fd -> struct sock and its inode, if fd is an AF_UNIX socket of the current
 * task.  It walks the kernel pointers with direct (BTF) loads, not one
 * bpf_probe_read_kernel call per hop.  bpf_rdonly_cast (>= 6.2) types what
 * the verifier cannot (a computed address); only the tracepoint backend
 * (>= 6.3) uses it.
 */
static __always_inline struct sock *fd_unix_sock(struct task_struct *t, long fd, __u64 *ino)
{
	struct fdtable *fdt = t->files->fdt;
	struct kiocb *slot;
	struct inode *inode;
	struct socket *sock;
	struct file *f;
	struct sock *sk;

	if (fd < 0 || fd >= fdt->max_fds)
		return NULL;
	/*
	 * The verifier takes no variable offset into a typed pointer, so the
	 * slot fd[fd] is cast to a struct whose member is a struct file *:
	 * a direct load, not a bpf_probe_read_kernel call (~50 ns here).
	 */
	slot = bpf_rdonly_cast((void *)((__u64)fdt->fd + fd * sizeof(f) -
					bpf_core_field_offset(struct kiocb, ki_filp)),
			       bpf_core_type_id_kernel(struct kiocb));
	f = slot->ki_filp;
	if (!f)
		return NULL;
	inode = f->f_inode;
	if (!inode || (inode->i_mode & S_IFMT) != S_IFSOCK)
		return NULL;
	sock = bpf_rdonly_cast(f->private_data, bpf_core_type_id_kernel(struct socket));
	sk = sock->sk;
	if (!sk || sk->__sk_common.skc_family != AF_UNIX)
		return NULL;
	*ino = inode->i_ino; /* a socket's file inode is its SOCK_INODE */
	return sk;
}

/*
 * No syscall hook: even an empty one puts every syscall of every task on the
 * slow path (filtered out, redis -P 1: 0.89 with tp_btf/sys_enter).
 * sock_send_length runs while the sender is still in its syscall, whose
 * number and arguments are in the user registers saved at entry
 * (bpf_task_pt_regs).  A 32-bit task's syscall numbers are from another
 * table, so its sends are counted as uncopyable, never read from a wrong
 * argument.
 */
#if defined(__TARGET_ARCH_x86)
#define SYSCALL_NR(regs) ((regs)->orig_ax)
#define SYSCALL_ARG6(regs) ((regs)->r9) /* libbpf < 1.3 has no PT_REGS_PARM6_SYSCALL */
#define COMPAT_SYSCALL(t) ((t)->thread_info.status & 0x0002 /* TS_COMPAT */)
enum { NR_WRITE = 1, NR_WRITEV = 20, NR_SENDTO = 44, NR_SENDMSG = 46, NR_SENDMMSG = 307 };
#elif defined(__TARGET_ARCH_arm64)
#define SYSCALL_NR(regs) ((regs)->syscallno)
#define SYSCALL_ARG6(regs) ((regs)->regs[5])
#define COMPAT_SYSCALL(t) ((t)->thread_info.flags & (1UL << 22) /* TIF_32BIT */)
enum { NR_WRITE = 64, NR_WRITEV = 66, NR_SENDTO = 206, NR_SENDMSG = 211, NR_SENDMMSG = 269 };
#else
#error "syscall numbers for this architecture"
#endif

/* Per task: the sendmmsg() call in progress; the next message to be sent is mmsg_next. */
struct task_send {
	__u32 mmsg_vlen;
	__u32 mmsg_next;
	__u64 mmsg_sk;
	__u64 mmsg_vec;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_send);
} task_sends SEC(".maps");

/*
 * Per sending socket, for the tracepoint backend's stamps (send_stamp): how
 * far its receiver has begun reading, in the socket's own byte count.
 */
struct sender {
	__u64 sent; /* bytes of its sends that have returned (sock_send_length) */
	__u64 begun; /* bytes of its skbs a receiver has begun to read (whole skbs) */
	__u64 early_ns; /* first read that began at or past `sent`, while early_at == sent + 1 */
	__u64 early_at;
	__u8 rejected; /* a stream or seqpacket socket the filter rejects */
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sender);
} senders SEC(".maps");

/*
 * The socket's sender storage, created if need be.  Created by the sender and
 * a reader at once, one of the two gets NULL (EEXIST): it looks again, so
 * that both count from the socket's first byte (else the counts differ by
 * that send until the next resync: 450 of 400,000 pingpong stamps inverted).
 */
static __always_inline struct sender *sender_of(struct sock *sk)
{
	struct sender *snd = bpf_sk_storage_get(&senders, sk, NULL, BPF_SK_STORAGE_GET_F_CREATE);

	return snd ? snd : bpf_sk_storage_get(&senders, sk, NULL, 0);
}

/*
 * UNIXCB(skb).consumed, a direct load inside skb->cb: BPF_CORE_READ would
 * call bpf_probe_read_kernel, and helper calls are dear (see fill_hdr).
 */
static __always_inline __u32 unix_consumed(const struct sk_buff *skb)
{
	return *(__u32 *)((void *)skb->cb + bpf_core_field_offset(struct unix_skb_parms, consumed));
}

/*
 * skb->sk of a unix skb is its sender (skb_set_owner_w), also while it is
 * read.  Only a read from an skb's start counts (UNIXCB(skb).consumed == 0;
 * datagrams are always read whole): noting the skb's address instead would
 * confuse a new skb with the last one freed, which the slab hands out again.
 */
SEC("tp_btf/skb_copy_datagram_iovec")
int BPF_PROG(tp_skb_read, const struct sk_buff *skb, int len)
{
	struct sock *sk = skb->sk;
	struct sender *snd;
	__u64 at, sent;

	if (!sk || sk->__sk_common.skc_family != AF_UNIX || unix_consumed(skb))
		return 0;
	snd = sender_of(sk);
	if (!snd || snd->rejected)
		return 0;
	at = snd->begun;
	snd->begun = at + skb->len;
	sent = snd->sent;
	/*
	 * The first read of bytes that no returned send covers: the send in
	 * flight's.  early_at is published after early_ns, by an exchange (fully
	 * ordered), and send_stamp reads it first: with plain accesses a send
	 * can take an earlier send's stamp (seen: 1 in 400,000 pingpong stamps).
	 */
	if (at >= sent && snd->early_at != sent + 1) {
		snd->early_ns = bpf_ktime_get_ns();
		__sync_lock_test_and_set(&snd->early_at, sent + 1);
	}
	return 0;
}

/*
 * The stamp of a send, taken at sock_send_length, after its bytes were
 * queued.  The only tracepoint between queueing and that point is
 * sk_data_ready, and a third program per message costs every socket the
 * filter rejects too (redis -P 1: 0.013 of its throughput filtered out, as
 * much captured; docs/capture.md).  A receiver already running can read the
 * bytes, answer, and be stamped before this runs.  So the receiver's program
 * (tp_skb_read) counts the bytes it begins to read and notes the time of the
 * first read past what the returned sends cover: that read is of this send,
 * follows its start and precedes any answer; it is the stamp.  Else the
 * stamp is now (the clock is read first: a read not seen yet comes later).
 * The two counts start together with the socket's storage; an empty receive
 * queue shows that everything was read and puts them in step again (after
 * peeks, splice reads, or on a connection older than the capture).  A "send"
 * is one sock_send_length: one message of a sendmmsg.
 */
static __always_inline __u64 send_stamp(struct sock *sk, long sent, struct sender *snd)
{
	__u64 now = bpf_ktime_get_ns(), base, stamp = now;
	struct sk_buff_head *q;
	struct unix_sock *u;
	struct sock *peer;

	if (!snd)
		return now;
	base = snd->sent;
	if (__sync_fetch_and_add(&snd->early_at, 0) == base + 1 && snd->early_ns < now)
		stamp = snd->early_ns;
	snd->sent = base + sent;
	u = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct unix_sock));
	peer = u->peer; /* NULL: a datagram to a named receiver, whose queue is not known here */
	q = peer ? &peer->sk_receive_queue : NULL;
	if (q && (void *)q->prev == (void *)q) /* all read, ours too: no read of ours is to come */
		snd->begun = base + sent;
	return stamp;
}

/* Resolve a user msghdr (sendmsg, or one of sendmmsg's) into src. */
static __always_inline void src_from_msghdr(struct send_src *src, __u64 umsg)
{
	struct user_msghdr m = {};

	bpf_probe_read_user(&m, sizeof(m), (void *)umsg);
	src->iov = (__u64)m.msg_iov;
	src->nr_segs = m.msg_iovlen;
	src->name = (__u64)m.msg_name;
	src->name_len = m.msg_name ? m.msg_namelen : 0;
	src->name_user = 1;
}

struct iov_sum {
	__u64 iov;
	__u64 nr_segs;
	__u64 total;
};

static long iov_sum_step(__u64 i, void *arg)
{
	struct iov_sum *s = arg;
	struct iovec seg;

	if (i >= s->nr_segs ||
	    bpf_probe_read_user(&seg, sizeof(seg), (void *)(s->iov + i * sizeof(seg))))
		return 1;
	s->total += seg.iov_len;
	return 0;
}

/*
 * Which of sendmmsg()'s messages is being sent: sock_send_length fires once
 * per message, in order, and a call goes on to message i + 1 only if message
 * i was sent whole.  So the index is tracked per task, and a call that reuses
 * the same array is told from the rest of the previous one because that one
 * ended (an error, a partial send or its last message).  Not seen: a call cut
 * short before reaching the socket (a fault in a later msghdr).
 */
static __always_inline void src_from_mmsg(struct send_src *src, struct task_send *t,
					  struct sock *sk, __u64 vec, __u32 vlen, long sent)
{
	struct iov_sum sum = {};
	__u32 idx = 0;

	if (t->mmsg_sk == (__u64)sk && t->mmsg_vec == vec && t->mmsg_vlen == vlen &&
	    t->mmsg_next < vlen)
		idx = t->mmsg_next;
	src_from_msghdr(src, vec + (__u64)idx * sizeof(struct mmsghdr));
	sum.iov = src->iov;
	sum.nr_segs = src->nr_segs < MAX_SEGS ? src->nr_segs : MAX_SEGS;
	bpf_loop(MAX_SEGS, iov_sum_step, &sum, 0);
	t->mmsg_sk = (__u64)sk;
	t->mmsg_vec = vec;
	t->mmsg_vlen = vlen;
	t->mmsg_next = sent > 0 && sent == sum.total ? idx + 1 : 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(tp_send_length, struct sock *sk, int ret, int flags)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct send_src src = {};
	struct task_send *t;
	struct sender *snd;
	struct pt_regs *regs;
	__u64 arg2, ino;
	long nr, sent;
	int copyable = 1;

	if (sk->__sk_common.skc_family != AF_UNIX)
		return 0;
	snd = sender_of(sk);
	if (snd && snd->rejected)
		return 0;
	regs = (struct pt_regs *)bpf_task_pt_regs(task);
	nr = COMPAT_SYSCALL(task) ? -1 : SYSCALL_NR(regs);
	arg2 = PT_REGS_PARM2_SYSCALL(regs);
	if (nr == NR_SENDMMSG) { /* tracked even when nothing is sent: the call ends */
		t = bpf_task_storage_get(&task_sends, task, NULL, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (t)
			src_from_mmsg(&src, t, sk, arg2, PT_REGS_PARM3_SYSCALL(regs), ret);
	}
	if (ret <= 0)
		return 0;
	sent = ret;
	barrier_var(sent); /* sign-extended here: the verifier then bounds it in 64 bits */
	switch (nr) {
	case NR_WRITE:
	case NR_WRITEV:
	case NR_SENDMMSG:
		break;
	case NR_SENDTO:
		src.name = PT_REGS_PARM5_SYSCALL(regs);
		src.name_len = src.name ? SYSCALL_ARG6(regs) : 0;
		src.name_user = 1;
		break;
	case NR_SENDMSG:
		src_from_msghdr(&src, arg2);
		break;
	default: /* io_uring, sendfile, splice, kernel senders: counted as uncopyable */
		copyable = 0;
	}
	src.start_ns = send_stamp(sk, sent, snd);
	/* the bytes are the syscall's only if its fd is this socket (not a kernel sender below it) */
	if (!copyable || fd_unix_sock(task, PT_REGS_PARM1_SYSCALL(regs), &ino) != sk)
		return emit_send(sk, sent, &src);
	src.ino = ino;
	src.copyable = 1;
	if (nr == NR_WRITE || nr == NR_SENDTO) {
		src.base = arg2;
		src.count = PT_REGS_PARM3_SYSCALL(regs);
	} else if (nr == NR_WRITEV) {
		src.iov = arg2;
		src.nr_segs = PT_REGS_PARM3_SYSCALL(regs);
	}
	/* a connected socket's sends never name a destination: drop them at once */
	if (emit_send(sk, sent, &src) == SEND_REJECTED && sk->sk_type != SOCK_DGRAM && snd)
		snd->rejected = 1;
	return 0;
}

/* ------------------------------------------------------- fentry and kprobe */

static __always_inline void stash_iter(struct socket *sock, struct msghdr *msg, const int bounded)
{
	struct send_src src = {};
	struct iov_iter *it = &msg->msg_iter;
	struct iov_iter___old *old = (void *)it;
	struct iov_iter___new *new = (void *)it;
	__u64 ptr, off;
	unsigned int type;

	src.start_ns = bpf_ktime_get_ns();
	src.sk = (__u64)BPF_CORE_READ(sock, sk);
	if (bpf_core_field_exists(new->iter_type))
		type = BPF_CORE_READ(new, iter_type);
	else
		type = BPF_CORE_READ(old, type) & ~1u; /* drop the direction bit */
	if (bpf_core_field_exists(new->__iov))
		ptr = (__u64)BPF_CORE_READ(new, __iov);
	else
		ptr = (__u64)BPF_CORE_READ(old, iov);
	off = BPF_CORE_READ(it, iov_offset);
	if (bpf_core_enum_value_exists(enum iter_type___ubuf, ITER_UBUF___ubuf) &&
	    type == bpf_core_enum_value(enum iter_type___ubuf, ITER_UBUF___ubuf)) {
		src.copyable = 1;
		src.base = ptr + off; /* ubuf shares the pointer slot with __iov */
		src.count = BPF_CORE_READ(it, count);
	} else if (type == bpf_core_enum_value(enum iter_type, ITER_IOVEC)) {
		src.copyable = 1;
		src.iov_kernel = 1;
		src.iov = ptr;
		src.base = off;
		src.nr_segs = BPF_CORE_READ(it, nr_segs);
	}
	src.name = (__u64)BPF_CORE_READ(msg, msg_name);
	src.name_len = src.name ? BPF_CORE_READ(msg, msg_namelen) : 0;
	stash_put(&src, bounded);
}

static __always_inline int emit_stashed(long ret, const int bounded)
{
	struct send_src src;

	if (stashed(&src, bounded))
		emit_send_as((struct sock *)src.sk, ret, &src, bounded);
	return 0;
}

/* One entry/exit pair per hooked function, backend and variant (name suffix _bounded). */
#define FENTRY_PAIR(fn, variant, bounded)                                                \
	SEC("fentry/" #fn)                                                               \
	int BPF_PROG(fe_##fn##variant, struct socket *sock, struct msghdr *msg, size_t len) \
	{                                                                                \
		stash_iter(sock, msg, bounded);                                          \
		return 0;                                                                \
	}                                                                                \
	SEC("fexit/" #fn)                                                                \
	int BPF_PROG(fx_##fn##variant, struct socket *sock, struct msghdr *msg, size_t len, \
		     int ret)                                                            \
	{                                                                                \
		return emit_stashed(ret, bounded);                                       \
	}

#define KPROBE_PAIR(fn, variant, bounded)                                                \
	SEC("kprobe/" #fn)                                                               \
	int BPF_KPROBE(kp_##fn##variant, struct socket *sock, struct msghdr *msg)        \
	{                                                                                \
		stash_iter(sock, msg, bounded);                                          \
		return 0;                                                                \
	}                                                                                \
	SEC("kretprobe/" #fn)                                                            \
	int BPF_KRETPROBE(kr_##fn##variant, int ret) /* int: the upper half of rax is junk */ \
	{                                                                                \
		return emit_stashed(ret, bounded);                                       \
	}

/* seqpacket sends go through unix_dgram_sendmsg */
FENTRY_PAIR(unix_stream_sendmsg, , 0)
FENTRY_PAIR(unix_dgram_sendmsg, , 0)
KPROBE_PAIR(unix_stream_sendmsg, , 0)
KPROBE_PAIR(unix_dgram_sendmsg, , 0)
FENTRY_PAIR(unix_stream_sendmsg, _bounded, 1)
FENTRY_PAIR(unix_dgram_sendmsg, _bounded, 1)
KPROBE_PAIR(unix_stream_sendmsg, _bounded, 1)
KPROBE_PAIR(unix_dgram_sendmsg, _bounded, 1)
