/*
 * early SOCKPATH N DELAY_MS: N connections to a listener of its own, each
 * client writing its request before the server has accept()ed it (so the
 * server's socket has no inode when the request is sent), then reading the
 * reply, which the server sends DELAY_MS after reading the request (a slow
 * server, or a blocking command).  Requests are RESP `ECHO msg-<i>`; the
 * server answers each with the bulk string `msg-<i>`.
 */
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "progs.h"

static void read_full(int fd, char *buf, size_t n)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = read(fd, buf + got, n - got);

		if (r <= 0)
			die("read");
		got += (size_t)r;
	}
}

static void write_full(int fd, const char *buf, size_t n)
{
	if (write(fd, buf, n) != (ssize_t)n)
		die("write");
}

int main(int argc, char **argv)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	char req[128], rep[64], buf[128];
	int lfd, n, delay_ms;
	struct timespec delay;

	if (argc != 4)
		return 2;
	n = atoi(argv[2]);
	delay_ms = atoi(argv[3]);
	delay.tv_sec = delay_ms / 1000;
	delay.tv_nsec = (delay_ms % 1000) * 1000000L;
	strncpy(sa.sun_path, argv[1], sizeof(sa.sun_path) - 1);
	lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(lfd, 16))
		die("listen");
	printf("ready\n");
	fflush(stdout);
	if (!fgets(buf, sizeof(buf), stdin))
		return 0;
	for (int i = 0; i < n; i++) {
		char msg[32];
		int c = socket(AF_UNIX, SOCK_STREAM, 0), s;
		int mlen = snprintf(msg, sizeof(msg), "msg-%d", i);
		int qlen = snprintf(req, sizeof(req), "*2\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n", mlen, msg);
		int rlen = snprintf(rep, sizeof(rep), "$%d\r\n%s\r\n", mlen, msg);

		if (c < 0 || connect(c, (struct sockaddr *)&sa, sizeof(sa)))
			die("connect");
		write_full(c, req, (size_t)qlen); /* before accept(): the server socket has no inode */
		s = accept(lfd, NULL, NULL);
		if (s < 0)
			die("accept");
		read_full(s, buf, (size_t)qlen);
		if (delay_ms)
			nanosleep(&delay, NULL);
		write_full(s, rep, (size_t)rlen);
		read_full(c, buf, (size_t)rlen);
		close(c);
		close(s);
	}
	printf("done\n");
	fflush(stdout);
	return 0;
}
