/*
 * sendmmsg() workload for tests/test_capture_live.py (same stdin/stdout protocol
 * as uxwork.py):  mmsg OUTDIR
 *
 *   1. a SOCK_DGRAM socketpair: one sendmmsg() of 8 messages, 3 iovecs each;
 *   2. a SOCK_STREAM socketpair: one sendmmsg() of 4 messages, 2 iovecs each,
 *      one of them larger than a capture record chunk (32 KiB);
 *   3. an unbound SOCK_DGRAM socket: one sendmmsg() of 3 messages, each with
 *      msg_name = OUTDIR/mm.sock (a bound receiver);
 *   4. the sendmmsg() of 1. again, same array (each call starts at message 0);
 *   5. a non-blocking SOCK_STREAM socketpair: a sendmmsg() of 4 messages of
 *      100000 bytes that the peer's queue cuts short (the last message sent
 *      is partial), then the same call again once the peer has read it all.
 *
 * Every byte each socket sent goes to OUTDIR/<inode>.sent.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "progs.h"

static const char *outdir;

/* append the bytes the kernel took from the first n messages (msg_len) to OUTDIR/<inode>.sent */
static void record(int fd, struct mmsghdr *m, int n)
{
	FILE *f = sent_file(outdir, fd, "ab");

	for (int i = 0; i < n; i++) {
		size_t left = m[i].msg_len;

		for (size_t j = 0; j < m[i].msg_hdr.msg_iovlen && left; j++) {
			size_t len = m[i].msg_hdr.msg_iov[j].iov_len < left ? m[i].msg_hdr.msg_iov[j].iov_len : left;

			fwrite(m[i].msg_hdr.msg_iov[j].iov_base, 1, len, f);
			left -= len;
		}
	}
	fclose(f);
}

static char *filled(size_t n, unsigned seed)
{
	char *p = malloc(n ? n : 1);

	for (size_t i = 0; i < n; i++)
		p[i] = (char)((i * 131 + seed * 7 + (i >> 8)) & 0xff);
	return p;
}

int main(int argc, char **argv)
{
	int dg[2], st[2], nb[2], rx, tx, n1, n2, n3, n4, n5, n6;
	struct mmsghdr m1[8], m2[4], m3[3], m5[4];
	struct iovec v1[8][3], v2[4][2], v3[3][1], v5[4];
	char *sink = malloc(1 << 20);
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	char hdr[8][16], line[64];

	if (argc != 2)
		return 2;
	outdir = argv[1];
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) || socketpair(AF_UNIX, SOCK_STREAM, 0, st) ||
	    socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, nb))
		die("socketpair");
	snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/mm.sock", outdir);
	rx = socket(AF_UNIX, SOCK_DGRAM, 0);
	tx = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (rx < 0 || tx < 0 || bind(rx, (struct sockaddr *)&addr, sizeof(addr)))
		die("bind");

	memset(m1, 0, sizeof(m1));
	for (int i = 0; i < 8; i++) {
		snprintf(hdr[i], sizeof(hdr[i]), "mmsg-%d:", i);
		v1[i][0] = (struct iovec){ hdr[i], strlen(hdr[i]) };
		v1[i][1] = (struct iovec){ filled(i * 1000 + 1, i), i * 1000 + 1 };
		v1[i][2] = (struct iovec){ "\n", 1 };
		m1[i].msg_hdr.msg_iov = v1[i];
		m1[i].msg_hdr.msg_iovlen = 3;
	}
	memset(m2, 0, sizeof(m2));
	for (int i = 0; i < 4; i++) {
		size_t big = i == 2 ? 50000 : 100 + i;

		v2[i][0] = (struct iovec){ filled(big, 10 + i), big };
		v2[i][1] = (struct iovec){ filled(7 + i, 20 + i), 7 + i };
		m2[i].msg_hdr.msg_iov = v2[i];
		m2[i].msg_hdr.msg_iovlen = 2;
	}
	memset(m3, 0, sizeof(m3));
	for (int i = 0; i < 3; i++) {
		v3[i][0] = (struct iovec){ filled(300 + i, 30 + i), 300 + i };
		m3[i].msg_hdr.msg_iov = v3[i];
		m3[i].msg_hdr.msg_iovlen = 1;
		m3[i].msg_hdr.msg_name = &addr;
		m3[i].msg_hdr.msg_namelen = sizeof(addr);
	}

	memset(m5, 0, sizeof(m5));
	for (int i = 0; i < 4; i++) {
		v5[i] = (struct iovec){ filled(100000, 40 + i), 100000 };
		m5[i].msg_hdr.msg_iov = &v5[i];
		m5[i].msg_hdr.msg_iovlen = 1;
	}

	printf("{\"ready\": {\"dgram\": %lu, \"stream\": %lu, \"tx\": %lu, \"nb\": %lu, "
	       "\"rpath\": \"%s\"}}\n",
	       ino(dg[0]), ino(st[0]), ino(tx), ino(nb[0]), addr.sun_path);
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 0;

	n1 = sendmmsg(dg[0], m1, 8, 0);
	n2 = sendmmsg(st[0], m2, 4, 0);
	n3 = sendmmsg(tx, m3, 3, 0);
	if (n1 < 0 || n2 < 0 || n3 < 0)
		die("sendmmsg");
	record(dg[0], m1, n1);
	record(st[0], m2, n2);
	record(tx, m3, n3);
	n4 = sendmmsg(dg[0], m1, 8, 0);
	if (n4 < 0)
		die("sendmmsg again");
	record(dg[0], m1, n4);
	n5 = sendmmsg(nb[0], m5, 4, 0);
	if (n5 < 0)
		die("sendmmsg non-blocking");
	record(nb[0], m5, n5);
	while (read(nb[1], sink, 1 << 20) > 0)
		;
	n6 = sendmmsg(nb[0], m5, 4, 0);
	if (n6 < 0)
		die("sendmmsg non-blocking again");
	record(nb[0], m5, n6);
	printf("{\"done\": {\"n\": [%d, %d, %d, %d, %d, %d], \"partial\": %u, \"sent\": {"
	       "\"%lu\": \"%s/%lu.sent\", \"%lu\": \"%s/%lu.sent\", \"%lu\": \"%s/%lu.sent\", "
	       "\"%lu\": \"%s/%lu.sent\"}}}\n",
	       n1, n2, n3, n4, n5, n6, m5[n5 - 1].msg_len, ino(dg[0]), outdir, ino(dg[0]), ino(st[0]),
	       outdir, ino(st[0]), ino(tx), outdir, ino(tx), ino(nb[0]), outdir, ino(nb[0]));
	fflush(stdout);
	return 0;
}
