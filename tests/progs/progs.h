/* Helpers shared by the C workloads of tests/progs/. */
#ifndef PROGS_H
#define PROGS_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

static inline void die(const char *what)
{
	perror(what);
	exit(2);
}

/* the socket's inode, as the capture reports it */
static inline unsigned long ino(int fd)
{
	struct stat st;

	if (fstat(fd, &st))
		die("fstat");
	return st.st_ino;
}

/* OUTDIR/<inode>.sent, where a workload states what a socket sent */
static inline FILE *sent_file(const char *outdir, int fd, const char *mode)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%lu.sent", outdir, ino(fd));
	f = fopen(path, mode);
	if (!f)
		die("fopen");
	return f;
}

#endif
