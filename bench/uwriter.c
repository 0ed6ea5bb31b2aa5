/* usniff bench writer: a rate-limited sender over a socketpair.
 *
 *   uwriter SIZE RATE SECONDS     RATE writes/s, 0 = as fast as possible
 *
 * The parent writes SIZE-byte messages on one end of an AF_UNIX stream
 * socketpair, a forked child reads and discards them.  Prints
 * "writes bytes seconds" of what the writer actually sent.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s SIZE RATE SECONDS\n", argv[0]);
		return 2;
	}
	size_t size = strtoul(argv[1], NULL, 0);
	double rate = atof(argv[2]), seconds = atof(argv[3]);
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) {
		perror("socketpair");
		return 1;
	}
	int bufsz = 4 << 20;
	setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &bufsz, sizeof bufsz);
	setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &bufsz, sizeof bufsz);
	pid_t child = fork();
	if (child == 0) {
		prctl(PR_SET_NAME, "ubench-rd");
		close(sv[0]);
		size_t cap = 1 << 20;
		char *buf = malloc(cap);
		for (;;) {
			ssize_t n = read(sv[1], buf, cap);
			if (n <= 0 && !(n < 0 && errno == EINTR))
				_exit(0);
		}
	}
	close(sv[1]);
	prctl(PR_SET_NAME, "ubench-wr");
	char *msg = malloc(size);
	for (size_t i = 0; i < size; i++)
		msg[i] = "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$1\r\nv\r\n"[i % 31];
	unsigned long long writes = 0, bytes = 0;
	double start = now(), end = start + seconds, t = start;
	unsigned step = rate > 0 && rate < 1000 ? 1 : 64;
	while (t < end) {
		for (unsigned k = 0; k < step; k++) {
			ssize_t n = write(sv[0], msg, size);
			if (n < 0) {
				if (errno == EINTR)
					continue;
				perror("write");
				return 1;
			}
			writes++;
			bytes += n;
		}
		t = now();
		if (rate > 0) {
			double due = start + writes / rate; /* ahead of schedule: wait */
			if (due > t) {
				if (due - t > 200e-6) {
					struct timespec ts = {0, (long)((due - t) * 1e9)};
					nanosleep(&ts, NULL);
				}
				while ((t = now()) < due)
					;
			}
		}
	}
	double elapsed = now() - start;
	close(sv[0]);
	waitpid(child, NULL, 0);
	printf("%llu %llu %.6f\n", writes, bytes, elapsed);
	return 0;
}
