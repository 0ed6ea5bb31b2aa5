/*
 * The C side of the contract in events.py, shared by the two extension
 * modules: the record assembler (capture/_records.c), which makes Records
 * and Packed records, and the EPB encoder (outputs/_epb.c), which frames them.
 *
 *  - Record's slots, read and written at their offsets (~2 ns) instead of
 *    through getattr/setattr (~25 ns each, a dozen or two per record).
 *    record_layout() checks, at each module's import, that events.Record
 *    still has exactly these fields in this order, in plain slots, with no
 *    __post_init__, and fails the import otherwise.
 *  - struct packed: a Packed record (the assembler's compact data record for
 *    a capture that only writes pcapng) as both modules see it.
 *  - csum_words(): the Internet checksum's sum, which the assembler computes
 *    for a Packed payload right after copying it out of the ring, while it is
 *    still in the CPU cache, and the encoder for every other payload.
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

#define RECORD_FIELDS 20
static const char *const record_fields[RECORD_FIELDS] = {
	"ts",	     "pid",    "tid",	 "uid",	   "comm", "inode",    "peer_inode",
	"sock_type", "path",   "path_is_own", "offset", "length", "data",   "lost",
	"flags",     "kind",   "peer_pid",    "sock_id", "peer_id", "peer_comm",
};
enum { R_TS = 0, R_PID, R_TID, R_UID, R_COMM, R_INODE, R_PEER_INODE, R_SOCK_TYPE, R_PATH,
       R_PATH_IS_OWN, R_OFFSET, R_LENGTH, R_DATA, R_LOST, R_FLAGS, R_KIND, R_PEER_PID,
       R_SOCK_ID, R_PEER_ID, R_PEER_COMM };
#define RSLOT(offsets, r, i) (*(PyObject **)((char *)(r) + (offsets)[i]))

/* Offsets of the plain object slots ``names`` of ``type``; TypeError if one is not. */
static inline int member_offsets(PyObject *type, const char *const *names, int n,
				 Py_ssize_t *offsets)
{
	for (int i = 0; i < n; i++) {
		PyObject *descr = PyObject_GetAttrString(type, names[i]);
		int ok = descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type) &&
			 ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX &&
			 !(((PyMemberDescrObject *)descr)->d_member->flags & READONLY);
		if (ok)
			offsets[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
		Py_XDECREF(descr);
		if (!ok) {
			PyErr_Clear();
			PyErr_Format(PyExc_TypeError, "%R.%s is not a plain slot", type, names[i]);
			return -1;
		}
	}
	return 0;
}

/* Offsets of the slots ``names`` of dataclass ``type``; with ``all``, they
 * must be its only fields, in this order.  ImportError naming ``module`` if not. */
static inline int slot_offsets(const char *module, PyObject *type, const char *const *names,
			       int n, int all, Py_ssize_t *offsets)
{
	PyObject *fields = PyObject_GetAttrString(type, "__dataclass_fields__");
	int ok = fields != NULL && PyDict_Check(fields) && PyType_Check(type) &&
		 (!all || PyDict_GET_SIZE(fields) == n) &&
		 !PyObject_HasAttrString(type, "__post_init__");
	Py_ssize_t pos = 0;
	PyObject *key, *value;
	for (int i = 0; ok && all && i < n; i++)
		ok = PyDict_Next(fields, &pos, &key, &value) && PyUnicode_Check(key) &&
		     PyUnicode_CompareWithASCIIString(key, names[i]) == 0;
	Py_XDECREF(fields);
	PyErr_Clear();
	if (!ok || member_offsets(type, names, n, offsets) < 0) {
		PyErr_Format(PyExc_ImportError, "%s: the fields of %R changed; update _events.h",
			     module, type);
		return -1;
	}
	return 0;
}

/* events.Record (new reference) and its slot offsets, checked (see the top). */
static inline PyObject *record_layout(const char *module, Py_ssize_t *offsets)
{
	PyObject *events = PyImport_ImportModule("usniff.events");
	PyObject *record = events == NULL ? NULL : PyObject_GetAttrString(events, "Record");
	Py_XDECREF(events);
	if (record != NULL &&
	    slot_offsets(module, record, record_fields, RECORD_FIELDS, 1, offsets) < 0)
		Py_CLEAR(record);
	return record;
}

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
	uint64_t sum; /* csum_words(data) */
	char data[];
};

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
