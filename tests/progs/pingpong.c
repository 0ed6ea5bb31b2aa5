/*
 * Request/answer race workload for tests/test_capture_live.py (same
 * stdin/stdout protocol as uxwork.py):  pingpong OUTDIR ROUNDS [WINDOW]
 *
 * Two threads, pinned to CPUs 0 and 1, own the two ends of a SOCK_STREAM
 * socketpair and spin on non-blocking recv().  End a keeps WINDOW (default 1)
 * one-byte requests 'q' in flight: it sends one more for every answer it
 * reads, ROUNDS in all; end b answers every byte it reads with one byte 'r'.
 * Every byte is its own write().  A spinning receiver can take a byte between
 * its queueing and the end of its sender's write(), and answer before that
 * write() returns: the capture must still stamp every answer after the
 * request it answers, and request i + WINDOW after answer i.
 *
 * Every byte each socket sent goes to OUTDIR/<inode>.sent.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include "progs.h"

static int sv[2];
static long rounds, window = 1;

static void send_one(int fd, char c)
{
	if (write(fd, &c, 1) != 1)
		die("write");
}

static void *side(void *arg)
{
	long me = (long)arg, sent = 0, got = 0;
	char buf[64];
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(me, &set);
	if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set))
		die("pthread_setaffinity_np");
	for (; !me && sent < window && sent < rounds; sent++)
		send_one(sv[0], 'q');
	while (got < rounds) {
		ssize_t n;

		while ((n = recv(sv[me], buf, sizeof(buf), MSG_DONTWAIT)) < 0 && errno == EAGAIN)
			;
		if (n <= 0)
			die("recv");
		got += n;
		for (ssize_t i = 0; i < n && (me || sent < rounds); i++, sent++)
			send_one(sv[me], me ? 'r' : 'q');
	}
	return NULL;
}

static void record(int fd, char c, long n, const char *outdir)
{
	FILE *f = sent_file(outdir, fd, "wb");

	for (long i = 0; i < n; i++)
		fputc(c, f);
	fclose(f);
}

int main(int argc, char **argv)
{
	pthread_t t[2];
	char line[64];

	if (argc != 3 && argc != 4)
		return 2;
	rounds = atol(argv[2]);
	if (argc == 4)
		window = atol(argv[3]);
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
		die("socketpair");
	printf("{\"ready\": {\"a\": %lu, \"b\": %lu}}\n", ino(sv[0]), ino(sv[1]));
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 0;
	for (long i = 0; i < 2; i++)
		if (pthread_create(&t[i], NULL, side, (void *)i))
			die("pthread_create");
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	record(sv[0], 'q', rounds, argv[1]);
	record(sv[1], 'r', rounds, argv[1]);
	printf("{\"done\": {\"sent\": {\"%lu\": \"%s/%lu.sent\", \"%lu\": \"%s/%lu.sent\"}}}\n",
	       ino(sv[0]), argv[1], ino(sv[0]), ino(sv[1]), argv[1], ino(sv[1]));
	fflush(stdout);
	return 0;
}
