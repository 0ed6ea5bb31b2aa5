// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Loads usniff's BPF object the way src/usniff/capture/collector.py (_try) does, for
 * each backend in turn, then proves capture: a child process sends a marker three times
 * on Unix socketpairs (stream and datagram) and the loader looks for it in the ring.
 * Built statically for aarch64 (tests/vm/arm64.py) to run as the only program of an
 * arm64 guest, where no Python is at hand.  One line per backend on stdout:
 *
 *   loader: fentry loop: loaded 4 programs, attached 4; records 6 (marker found in 3)
 *
 * Usage: loader OBJECT BACKEND[:bounded]...   exit status 0 when all loaded and captured.
 */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#define MARKER "usniff-arm64-capture-check"
#define RING_BYTES (4u << 20)

/* struct usniff_config (ebpf/usniff.h) */
struct config {
	unsigned int self_pid, snaplen;
	unsigned char filter_path, filter_pid, filter_comm, type_mask, filter_cgroup, pad[3];
	unsigned int wake_bytes, copy_calls;
};

struct seen {
	int records, with_marker;
};

static const char *backend_of(const char *section)
{
	static const struct { const char *prefix, *backend; } table[] = {
		{ "fentry/", "fentry" },	 { "fexit/", "fentry" },
		{ "kprobe/", "kprobe" },	 { "kretprobe/", "kprobe" },
		{ "tracepoint/", "tracepoint" }, { "tp_btf/", "tracepoint" },
	};
	for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
		if (!strncmp(section, table[i].prefix, strlen(table[i].prefix)))
			return table[i].backend;
	return "";
}

static int ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);
	return n >= m && !strcmp(s + n - m, suffix);
}

static int on_record(void *ctx, void *data, size_t size)
{
	struct seen *seen = ctx;
	seen->records++;
	if (memmem(data, size, MARKER, sizeof(MARKER) - 1))
		seen->with_marker++;
	return 0;
}

/* A child, so that the self_pid filter (the collector skips its own sends) does not apply.
 * Three sends, through the three system calls whose arm64 numbers the tracepoint backend
 * decodes its arguments by: write and writev on a stream pair, sendmsg on a datagram pair. */
static int send_marker(void)
{
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		int stream[2], dgram[2];
		char buf[3 * sizeof(MARKER)];
		struct iovec iov = { .iov_base = MARKER, .iov_len = sizeof(MARKER) - 1 };
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
		ssize_t n = sizeof(MARKER) - 1;
		if (socketpair(AF_UNIX, SOCK_STREAM, 0, stream) ||
		    socketpair(AF_UNIX, SOCK_DGRAM, 0, dgram) || write(stream[0], MARKER, n) != n ||
		    writev(stream[0], &iov, 1) != n || read(stream[1], buf, sizeof(buf)) != 2 * n ||
		    sendmsg(dgram[0], &msg, 0) != n || read(dgram[1], buf, sizeof(buf)) != n)
			_exit(1);
		_exit(0);
	}
	int status;
	waitpid(pid, &status, 0);
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
}

static int run(const char *path, const char *backend, int bounded)
{
	const char *variant = bounded ? "bounded" : "loop";
	/* the maps only the other variant uses (collector._NOT_CREATED) */
	static const char *not_created[2][3] = { { "stash_tid", "offset_locks", "cpu_ids" },
						 { "stash", "task_sends", NULL } };
	struct bpf_object *obj = bpf_object__open_file(path, NULL);
	struct bpf_link *links[64];
	struct bpf_program *prog;
	struct ring_buffer *ring = NULL;
	struct seen seen = { 0 };
	int loaded = 0, attached = 0, err;

	if (!obj) {
		printf("loader: %s %s: cannot open %s: %s\n", backend, variant, path, strerror(errno));
		return 1;
	}
	bpf_object__for_each_program(prog, obj) {
		int ours = !strcmp(backend_of(bpf_program__section_name(prog)), backend) &&
			   ends_with(bpf_program__name(prog), "_bounded") == bounded;
		bpf_program__set_autoload(prog, ours);
		loaded += ours;
	}
	for (int i = 0; i < 3 && not_created[bounded][i]; i++)
		bpf_map__set_autocreate(bpf_object__find_map_by_name(obj, not_created[bounded][i]),
					false);
	bpf_map__set_max_entries(bpf_object__find_map_by_name(obj, "events"), RING_BYTES);
	bpf_map__set_max_entries(bpf_object__find_map_by_name(obj, "scratch_map"),
				 libbpf_num_possible_cpus());
	err = bpf_object__load(obj);
	if (err) {
		printf("loader: %s %s: load of %d programs FAILED: error %d\n", backend, variant,
		       loaded, -err);
		bpf_object__close(obj);
		return 1;
	}
	struct config cfg = { .self_pid = getpid(), .wake_bytes = 4096 };
	unsigned int zero = 0;
	bpf_map__update_elem(bpf_object__find_map_by_name(obj, "cfg_map"), &zero, sizeof(zero),
			     &cfg, sizeof(cfg), BPF_ANY);
	bpf_object__for_each_program(prog, obj) {
		if (!bpf_program__autoload(prog))
			continue;
		struct bpf_link *link = bpf_program__attach(prog);
		if (!link) {
			printf("loader: %s %s: attach %s FAILED: error %d\n", backend, variant,
			       bpf_program__name(prog), errno); /* 524: ENOTSUPP */
			continue;
		}
		links[attached++] = link;
	}
	ring = ring_buffer__new(bpf_map__fd(bpf_object__find_map_by_name(obj, "events")),
				on_record, &seen, NULL);
	err = send_marker();
	/* sends below wake_bytes do not wake a poller: read what is there */
	if (ring)
		ring_buffer__consume(ring);
	printf("loader: %s %s: loaded %d programs, attached %d; records %d (marker found in %d)%s\n",
	       backend, variant, loaded, attached, seen.records, seen.with_marker,
	       err ? ", socketpair writes FAILED" : "");
	ring_buffer__free(ring);
	while (attached)
		bpf_link__destroy(links[--attached]);
	bpf_object__close(obj);
	return !(loaded && seen.with_marker >= 3);
}

int main(int argc, char **argv)
{
	int failed = 0;
	if (argc < 3) {
		fprintf(stderr, "usage: %s OBJECT BACKEND[:bounded]...\n", argv[0]);
		return 2;
	}
	for (int i = 2; i < argc; i++) {
		char backend[32];
		snprintf(backend, sizeof(backend), "%s", argv[i]);
		char *colon = strchr(backend, ':');
		int bounded = colon && !strcmp(colon + 1, "bounded");
		if (colon)
			*colon = '\0';
		failed += run(argv[1], backend, bounded);
	}
	return failed ? 1 : 0;
}
