/*
 * Sockets as C programs commonly bind them, with bytes left unread, for the
 * `usniff list` test:  bindq PATH NAME COMM NBYTES
 *
 * A stream listener bound to PATH with the terminating NUL counted in
 * addrlen (the kernel keeps it in the bound address); one connection
 * accepted with NBYTES sent to it and not read; one connection left
 * unaccepted; a datagram socket bound to the abstract name NAME holding
 * three unread 100-byte datagrams.  The process renames itself COMM.
 * Prints "ready" and waits for its stdin to close.
 */
#include <stddef.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "progs.h"

static socklen_t address(struct sockaddr_un *a, const char *name, int abstract)
{
	size_t n = strlen(name);

	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	if (n + 1 > sizeof(a->sun_path))
		die("name too long");
	memcpy(a->sun_path + abstract, name, n);
	/* a path: count its NUL, as many C programs do; an abstract name: exact */
	return offsetof(struct sockaddr_un, sun_path) + n + 1;
}

int main(int argc, char **argv)
{
	struct sockaddr_un a, d;
	socklen_t alen, dlen;
	int lsn, c1, c2, acc, dgram, sender, i;
	char buf[4096];
	long n;

	if (argc != 5)
		die("usage: bindq PATH NAME COMM NBYTES");
	n = atol(argv[4]);
	if (n < 0 || n > (long)sizeof(buf))
		die("NBYTES");
	memset(buf, 'x', sizeof(buf));
	alen = address(&a, argv[1], 0);
	lsn = socket(AF_UNIX, SOCK_STREAM, 0);
	if (lsn < 0 || bind(lsn, (struct sockaddr *)&a, alen) || listen(lsn, 8))
		die("listener");
	c1 = socket(AF_UNIX, SOCK_STREAM, 0);
	if (c1 < 0 || connect(c1, (struct sockaddr *)&a, alen))
		die("connect");
	acc = accept(lsn, NULL, NULL);
	if (acc < 0)
		die("accept");
	if (write(c1, buf, n) != n)
		die("write");
	c2 = socket(AF_UNIX, SOCK_STREAM, 0);
	if (c2 < 0 || connect(c2, (struct sockaddr *)&a, alen))
		die("connect");
	dlen = address(&d, argv[2], 1);
	dgram = socket(AF_UNIX, SOCK_DGRAM, 0);
	sender = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (dgram < 0 || sender < 0 || bind(dgram, (struct sockaddr *)&d, dlen))
		die("dgram");
	for (i = 0; i < 3; i++)
		if (sendto(sender, buf, 100, 0, (struct sockaddr *)&d, dlen) != 100)
			die("sendto");
	if (prctl(PR_SET_NAME, argv[3]))
		die("prctl");
	printf("ready\n");
	fflush(stdout);
	while (read(0, buf, sizeof(buf)) > 0)
		;
	return 0;
}
