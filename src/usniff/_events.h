/*
 * The C side of the contract in events.py: usniff._events (_events.c) makes
 * Records and Packed records for the record assembler (capture/_records.c)
 * and gives both it and the EPB encoder (outputs/_epb.c), which frames them,
 * what they share, through the capsule usniff._events._C_API (struct
 * usniff_events_api, events_api() below):
 *
 *  - Record's and CaptureStats' slots, read and written at their offsets
 *    (~2 ns) instead of through getattr/setattr (~25 ns each, a dozen or two
 *    per record).  _events.c checks, at its import, that events.Record still
 *    has exactly these fields in this order, in plain slots, with no
 *    __post_init__, and fails the import otherwise.
 *  - struct packed: a Packed record (the compact data record of a capture
 *    that only writes pcapng) as all three modules see it.
 *  - csum_words(): the Internet checksum's sum, computed for a Packed payload
 *    right after its copy out of the ring, while it is still in the CPU cache,
 *    when pcapng will frame it (else by the encoder if it ever needs it), and
 *    by the encoder for every other payload.
 */
#ifndef USNIFF_EVENTS_H
#define USNIFF_EVENTS_H

#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#include <linux/types.h>
#include "usniff.h" /* struct usniff_event, shared with the BPF programs */

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "usniff's C modules assume a little-endian host (as the BPF ring records are)"
#endif

#define RECORD_FIELDS 22
static const char *const record_fields[RECORD_FIELDS] = {
	"ts",	     "pid",    "tid",	 "uid",	   "comm", "inode",    "peer_inode",
	"sock_type", "path",   "path_is_own", "offset", "length", "data",   "lost",
	"flags",     "kind",   "peer_pid",    "sock_id", "peer_id", "peer_comm",
	"cgroup",    "peer_cgroup",
};
enum { R_TS = 0, R_PID, R_TID, R_UID, R_COMM, R_INODE, R_PEER_INODE, R_SOCK_TYPE, R_PATH,
       R_PATH_IS_OWN, R_OFFSET, R_LENGTH, R_DATA, R_LOST, R_FLAGS, R_KIND, R_PEER_PID,
       R_SOCK_ID, R_PEER_ID, R_PEER_COMM, R_CGROUP, R_PEER_CGROUP };
#define RSLOT(offsets, r, i) (*(PyObject **)((char *)(r) + (offsets)[i]))

#define STATS_FIELDS 3 /* CaptureStats slots the assembler adds to */
enum { S_RECORDS = 0, S_BYTES, S_BYTES_KEPT };

/*
 * A data record as the pcapng output frames it: the ring record's header as
 * it came and the payload inline, one object instead of a Record and the
 * float, int, str and bytes objects of its fields (capture/_records.c makes
 * them; outputs/_epb.c frames them from these fields; Packed.record() gives
 * the equivalent Record).
 */
struct packed {
	PyObject_VAR_HEAD /* ob_size: payload bytes */
	struct usniff_event ev;
	double ts; /* wall clock, as Record.ts */
	PyObject *sock_id; /* int: ev.sock_id, the encoder's key of the flow */
	PyObject *comm, *peer_comm; /* str: ev.comm and ev.peer_comm, as Record has them */
	PyObject *path, *path_is_own; /* str and bool, as Record has them */
	uint64_t sum; /* csum_words(data), or PACKED_UNSUMMED until the encoder needs it */
	char data[];
};

/* What usniff._events gives the two other modules (its capsule). */
struct usniff_events_api {
	PyTypeObject *record_type; /* events.Record */
	const Py_ssize_t *record_offsets; /* its slots, by R_* */
	PyTypeObject *stats_type; /* events.CaptureStats */
	const Py_ssize_t *stats_offsets; /* its records, bytes, bytes_kept slots */
	PyTypeObject *packed_type; /* Packed */
	/* an int for an id that repeats (inode, pid...), from a cache (new reference) */
	PyObject *(*id_int)(uint64_t v);
	/* the Record of a ring record whose payload is body[0:n] (new reference) */
	PyObject *(*make_record)(const struct usniff_event *ev, double ts, const char *body,
				 Py_ssize_t n, PyObject *path, PyObject *is_own, PyObject *flags);
	/* the Packed of a data record, its payload summed if sum (new reference) */
	struct packed *(*packed_new)(const struct usniff_event *ev, double ts, const char *body,
				     Py_ssize_t n, PyObject *path, PyObject *is_own,
				     PyObject *sock_id, int sum);
	/* Packed.record() (new reference) */
	PyObject *(*packed_record)(PyObject *packed, PyObject *unused);
};

#define PACKED_UNSUMMED UINT64_MAX /* csum_words() is below 65535 */

#define USNIFF_EVENTS_API "usniff._events._C_API"

/* The API, imported once per module (NULL and an exception on failure). */
static inline const struct usniff_events_api *events_api(void)
{
	/* PyCapsule_Import finds the module as an attribute of usniff: import it first */
	PyObject *mod = PyImport_ImportModule("usniff._events");
	if (mod == NULL)
		return NULL;
	Py_DECREF(mod);
	return (const struct usniff_events_api *)PyCapsule_Import(USNIFF_EVENTS_API, 0);
}

/*
 * A number congruent, modulo 65535, to the sum of the big-endian 16-bit words
 * of p[0:n] (zero-padded): what the Internet checksum folds.  Little-endian
 * 64-bit words are summed with end-around carry (2^64 = 1 mod 65535, and so is
 * 2^16, so each word is congruent to the sum of its 16-bit words); multiplying
 * by 256 modulo 65535 then swaps the bytes of the sum (RFC 1071).
 */
static inline uint64_t csum_words(const unsigned char *p, Py_ssize_t n)
{
	uint64_t s0 = 0, s1 = 0, c0 = 0, c1 = 0, w0, w1;
	Py_ssize_t i = 0;
	for (; i + 16 <= n; i += 16) {
		memcpy(&w0, p + i, 8);
		memcpy(&w1, p + i + 8, 8);
		s0 += w0;
		c0 += s0 < w0;
		s1 += w1;
		c1 += s1 < w1;
	}
	if (i + 8 <= n) {
		memcpy(&w0, p + i, 8);
		s0 += w0;
		c0 += s0 < w0;
		i += 8;
	}
	if (i < n) {
		w1 = 0;
		memcpy(&w1, p + i, (size_t)(n - i));
		s1 += w1;
		c1 += s1 < w1;
	}
	uint64_t le = s0 % 0xFFFF + s1 % 0xFFFF + c0 + c1;
	return (le % 0xFFFF) * 256 % 0xFFFF;
}

#endif
