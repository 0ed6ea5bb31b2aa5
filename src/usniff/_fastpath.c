/*
 * usniff._fastpath: the collector's per-record hot path, in C.
 *
 * Four pieces, each the only implementation of what it does:
 *
 *  - drain(): the walk over a BPF ring buffer's memory mapping (ringbuf.py
 *    maps it, RingBuffer.drain calls this): each committed record goes to the
 *    record handler below directly, no Python call or memoryview per record;
 *    consumer position published every RELEASE bytes and at the end.
 *  - EventHandler._handle (base class of capture.Capture): one ring-buffer
 *    record (struct usniff_event from ebpf/usniff.h, which capture._EVENT
 *    mirrors) -> one events.Record appended to the Capture's batch.
 *    Rare cases call back into Python: EV_SOCK/EV_DEST (Capture._announce),
 *    an unknown inode (_lookup), datagram destinations (_destination),
 *    losses (_count_loss).
 *  - tcp()/udp(): one whole pcapng Enhanced Packet Block (IPv4 + TCP/UDP
 *    headers with both checksums, payload, padding, options, trailer)
 *    appended to the batch buffer (outputs/pcapng.py _Sink); payloads of
 *    SPLICE_MIN bytes or more are handed to _Sink.splice (kept by reference
 *    for writev) instead of being copied.  The Internet checksum is summed
 *    here (no numpy).
 *  - write_batch(): PcapngOutput.write's loop over a batch; the common TCP
 *    record (fast_record, fast_packed) is framed here, the others by
 *    Framer.add.  Packed: the drain's compact data record for a capture
 *    that only writes pcapng; its payload is summed for the checksum right
 *    after the copy out of the ring, while it is still in the CPU cache.
 *
 * Why C: in Python, the per-record cost (building a Record, framing an EPB,
 * walking the ring) was what limited the collector, and on a shared machine
 * the collector's CPU is taken from the traced service.  What each piece
 * costs and gains: docs/performance.md ("Collector"; `python -m bench
 * collector`).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "usniff._fastpath assumes a little-endian host (as the BPF ring records are)"
#endif

/* the ring record layout, shared with the BPF programs (capture._EVENT mirrors it) */
#include <linux/types.h>
#include "usniff.h"

_Static_assert(sizeof(struct usniff_event) == 120, "capture._EVENT is 120 bytes");
_Static_assert(sizeof(struct usniff_sock_state) == 88, "capture._STATE is 88 bytes");

enum { SOCK_STREAM = 1, SOCK_DGRAM = 2 };

#define SPLICE_MIN 4096 /* outputs/pcapng.py: payloads from this size are kept by reference */
#define BT_EPB 6
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define TCP_ACK 0x10
#define TCP_PSH 0x08
#define FLAG_MSG_END 2	  /* events.FLAG_MSG_END */
#define MAX_SEGMENT 65495 /* outputs/pcapng.py MAX_SEGMENT: TCP payload of one IPv4 packet */

/* interned attribute names, and objects looked up once */
static PyObject *s_splice, *s_sock_info, *s_dest, *s_in_dest, *s_clock, *s_stats,
	*s_batch, *s_last, *s_lookup,
	*s_destination, *s_count_loss, *s_announce, *s_data, *s_lost, *s_release,
	*s_dirs, *s_packets, *s_parts_size, *s_add, *s_packed;
static PyObject *Record;     /* usniff.events.Record */
static PyObject *CaptureStats; /* usniff.events.CaptureStats */
static PyObject *SOCK_TYPES; /* usniff.events.SOCK_TYPES */
static PyObject *empty_bytes;

/* -------------------------------------------------------------- slot access */

/*
 * The hot path reads and writes a few classes' __slots__ directly at their
 * offsets (~2 ns) instead of through getattr/setattr (~25 ns each, a dozen
 * or two per record): _Dir (outputs/pcapng.py), Record and CaptureStats
 * (events.py).  The offsets come from the classes' member descriptors,
 * checked to be plain object slots.
 */
static int member_offsets(PyObject *type, const char *const *names, int n, Py_ssize_t *offsets)
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
			PyErr_Format(PyExc_TypeError, "usniff._fastpath: %R.%s is not a plain slot",
				     type, names[i]);
			return -1;
		}
	}
	return 0;
}

/* A slot's value (borrowed), AttributeError when unset. */
static inline PyObject *slot(PyObject *obj, Py_ssize_t offset, const char *name)
{
	PyObject *v = *(PyObject **)((char *)obj + offset);
	if (v == NULL)
		PyErr_Format(PyExc_AttributeError, "%s is not set", name);
	return v;
}

enum { D_PEER, D_NOTE, D_COMMENT_KEY, D_COMMENT_OPTS, D_FIELDS };
static const char *const dir_fields[D_FIELDS] = {"peer", "note", "comment_key", "comment_opts"};
static PyObject *dir_type; /* the class whose offsets dir_offsets holds (pcapng._Dir) */
static Py_ssize_t dir_offsets[D_FIELDS];

/*
 * The numbers of one direction of a flow, as C values: pcapng._Dir subclasses
 * this type (adding its object slots), so the framing here reads and advances
 * them without converting Python ints (seven per packet) or allocating a new
 * next_off per packet.
 */
typedef struct {
	PyObject_HEAD
	unsigned long long seq0; /* seq = seq0 + stream offset (ISN + 1) */
	unsigned long long next_off; /* next stream offset expected (what the peer has ACKed) */
	unsigned long long l4_sum, ip_sum; /* constant parts of the header checksums */
	int fin, proto;
	char addrs[12]; /* source, destination address; source, destination port */
} Direction;

static PyTypeObject DirectionType;

/* The direction d (as its C struct), or NULL and TypeError. */
static Direction *as_direction(PyObject *d)
{
	if (!PyObject_TypeCheck(d, &DirectionType)) {
		PyErr_Format(PyExc_TypeError, "%R is not a _fastpath.Direction", Py_TYPE(d));
		return NULL;
	}
	return (Direction *)d;
}

/* An attribute of a _Dir (borrowed); NULL and TypeError if d is not a Direction. */
static PyObject *dir_get(PyObject *d, int f)
{
	if ((PyObject *)Py_TYPE(d) != dir_type) {
		Py_ssize_t offsets[D_FIELDS];
		if (as_direction(d) == NULL)
			return NULL;
		if (member_offsets((PyObject *)Py_TYPE(d), dir_fields, D_FIELDS, offsets) < 0)
			return NULL;
		memcpy(dir_offsets, offsets, sizeof offsets);
		Py_XSETREF(dir_type, Py_NewRef((PyObject *)Py_TYPE(d)));
	}
	return slot(d, dir_offsets[f], dir_fields[f]);
}

static PyObject *direction_get_addrs(PyObject *self, void *closure)
{
	(void)closure;
	return PyBytes_FromStringAndSize(((Direction *)self)->addrs, 12);
}

static int direction_set_addrs(PyObject *self, PyObject *value, void *closure)
{
	(void)closure;
	if (value == NULL || !PyBytes_Check(value) || PyBytes_GET_SIZE(value) != 12) {
		PyErr_SetString(PyExc_TypeError, "addrs: 12 bytes (two IPv4 addresses, two ports)");
		return -1;
	}
	memcpy(((Direction *)self)->addrs, PyBytes_AS_STRING(value), 12);
	return 0;
}

static PyMemberDef direction_members[] = {
	{"seq0", T_ULONGLONG, offsetof(Direction, seq0), 0, "seq = seq0 + stream offset"},
	{"next_off", T_ULONGLONG, offsetof(Direction, next_off), 0, "next stream offset expected"},
	{"l4_sum", T_ULONGLONG, offsetof(Direction, l4_sum), 0, "TCP/UDP checksum, constant part"},
	{"ip_sum", T_ULONGLONG, offsetof(Direction, ip_sum), 0, "IPv4 checksum, constant part"},
	{"fin", T_INT, offsetof(Direction, fin), 0, "1 once this side has sent its FIN"},
	{"proto", T_INT, offsetof(Direction, proto), 0, "IPPROTO_TCP or IPPROTO_UDP"},
	{NULL, 0, 0, 0, NULL},
};

static PyGetSetDef direction_getset[] = {
	{"addrs", direction_get_addrs, direction_set_addrs, "source, destination, ports", NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject DirectionType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "usniff._fastpath.Direction",
	.tp_basicsize = sizeof(Direction),
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
	.tp_doc = PyDoc_STR("Base of pcapng._Dir: a flow direction's numbers, as C values."),
	.tp_members = direction_members,
	.tp_getset = direction_getset,
	.tp_new = PyType_GenericNew,
};

/* ------------------------------------------------------------------ checksum */

/*
 * A number congruent, modulo 65535, to the sum of the big-endian 16-bit words
 * of p[0:n] (zero-padded): what the Internet checksum folds.  Little-endian
 * 64-bit words are summed with end-around carry (2^64 = 1 mod 65535, and so is
 * 2^16, so each word is congruent to the sum of its 16-bit words); multiplying
 * by 256 modulo 65535 then swaps the bytes of the sum (RFC 1071).
 */
static uint64_t csum_words(const unsigned char *p, Py_ssize_t n)
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

/* --------------------------------------------------------------- EPB writer */

static inline void put_be16(unsigned char *p, unsigned v)
{
	p[0] = (unsigned char)(v >> 8);
	p[1] = (unsigned char)v;
}

static inline void put_be32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}

static inline void put_le32(unsigned char *p, uint32_t v)
{
	memcpy(p, &v, 4);
}

/* Grow the bytearray by n bytes; the new space's address, or NULL. */
static unsigned char *grow(PyObject *buf, Py_ssize_t n)
{
	Py_ssize_t old = PyByteArray_GET_SIZE(buf);
	if (PyByteArray_Resize(buf, old + n) < 0)
		return NULL;
	return (unsigned char *)PyByteArray_AS_STRING(buf) + old;
}

/*
 * Append one EPB: hdr (IPv4 + transport header, hlen bytes, already with both
 * checksums), payload, padding, the options ``opts`` (bytes, opt_endofopt not
 * included) and the trailer.  ``origlen`` is the IPv4 total length.
 */
static unsigned long splices; /* payloads epb has handed to _Sink.splice */

static int epb(PyObject *buf, double ts, const unsigned char *hdr, Py_ssize_t hlen,
	       PyObject *payload_obj, const Py_buffer *payload, Py_ssize_t origlen, PyObject *opts)
{
	Py_ssize_t caplen = hlen + payload->len;
	Py_ssize_t pad = (4 - caplen % 4) % 4;
	Py_ssize_t olen = PyBytes_GET_SIZE(opts);
	Py_ssize_t total = 32 + caplen + pad + olen + 4;
	int splice = payload->len >= SPLICE_MIN;
	uint64_t usec = (uint64_t)(int64_t)(ts * 1000000.0); /* int(ts * 1_000_000) */
	Py_ssize_t head = 28 + hlen + (splice ? 0 : payload->len);
	Py_ssize_t tail = pad + olen + 8;
	unsigned char *p = grow(buf, splice ? head : head + tail);
	if (p == NULL)
		return -1;
	put_le32(p, BT_EPB);
	put_le32(p + 4, (uint32_t)total);
	put_le32(p + 8, 0);
	put_le32(p + 12, (uint32_t)(usec >> 32));
	put_le32(p + 16, (uint32_t)usec);
	put_le32(p + 20, (uint32_t)caplen);
	put_le32(p + 24, (uint32_t)origlen);
	memcpy(p + 28, hdr, (size_t)hlen);
	p += 28 + hlen;
	if (splice) {
		PyObject *r = PyObject_CallMethodOneArg(buf, s_splice, payload_obj);
		if (r == NULL)
			return -1;
		Py_DECREF(r);
		splices++;
		p = grow(buf, tail);
		if (p == NULL)
			return -1;
	} else {
		memcpy(p, payload->buf, (size_t)payload->len);
		p += payload->len;
	}
	memset(p, 0, (size_t)pad);
	p += pad;
	memcpy(p, PyBytes_AS_STRING(opts), (size_t)olen);
	p += olen;
	put_le32(p, 0); /* opt_endofopt */
	put_le32(p + 4, (uint32_t)total);
	return 0;
}

/* The IPv4 header (hdr[0:20]) of a packet of ``total`` bytes from direction d. */
static void ipv4_header(const Direction *d, int proto, Py_ssize_t total, unsigned char *hdr)
{
	/* version/IHL, TOS 0, total length, id 0, DF, TTL 64, proto, checksum, addresses */
	hdr[0] = 0x45;
	hdr[1] = 0;
	put_be16(hdr + 2, (unsigned)total);
	put_be16(hdr + 4, 0);
	hdr[6] = 0x40;
	hdr[7] = 0;
	hdr[8] = 64;
	hdr[9] = (unsigned char)proto;
	put_be16(hdr + 10, (unsigned)(0xFFFF - (d->ip_sum + (uint64_t)total) % 0xFFFF));
	memcpy(hdr + 12, d->addrs, 12);
}

typedef struct {
	PyObject_VAR_HEAD /* ob_size: payload bytes */
	struct usniff_event ev;
	double ts; /* wall clock, as Record.ts */
	PyObject *path; /* str, and the flag, from Capture._sock_info */
	PyObject *path_is_own;
	uint64_t sum; /* csum_words(data): summed by the drain while data is in cache */
	char data[];
} Packed;

static PyTypeObject PackedType;

/* The payload's bytes: a Packed's own (it outlives the call: no export), or
 * any other buffer's (released with PyBuffer_Release). */
static int get_payload(PyObject *obj, Py_buffer *view)
{
	if (Py_IS_TYPE(obj, &PackedType)) {
		view->obj = NULL;
		view->buf = ((Packed *)obj)->data;
		view->len = Py_SIZE(obj);
		return 0;
	}
	return PyObject_GetBuffer(obj, view, PyBUF_SIMPLE);
}

/* csum_words of what get_payload gave: a Packed's was summed when it was made. */
static uint64_t payload_sum(PyObject *obj, const Py_buffer *view)
{
	if (Py_IS_TYPE(obj, &PackedType))
		return ((Packed *)obj)->sum;
	return csum_words(view->buf, view->len);
}

static int check_bytes(PyObject *obj, const char *what)
{
	if (!PyBytes_Check(obj)) {
		PyErr_Format(PyExc_TypeError, "%s must be bytes", what);
		return -1;
	}
	return 0;
}

/* One TCP segment's EPB (tcp() below; write_batch()). */
static int tcp_block(PyObject *buf, PyObject *dobj, double ts, long flags, uint64_t off,
		     PyObject *payload_obj, Py_ssize_t length, PyObject *opts, PyObject *tcp_opts)
{
	Py_ssize_t olen = PyBytes_GET_SIZE(tcp_opts);
	if (olen > 40 || olen % 4) {
		PyErr_SetString(PyExc_ValueError, "tcp_opts: at most 40 bytes, a multiple of 4");
		return -1;
	}
	Direction *d = as_direction(dobj), *peer = NULL;
	if (d == NULL)
		return -1;
	if (flags & TCP_ACK) {
		PyObject *p = dir_get(dobj, D_PEER);
		if (p == NULL || (peer = as_direction(p)) == NULL)
			return -1;
	}
	uint32_t seq = (uint32_t)(d->seq0 + off);
	uint32_t ack = peer ? (uint32_t)(peer->seq0 + peer->next_off + (unsigned)peer->fin) : 0;
	Py_ssize_t hlen = 20 + olen;
	Py_ssize_t tcp_len = hlen + length;
	Py_ssize_t total = 20 + tcp_len;
	unsigned word = (unsigned)((hlen << 10) | flags);
	unsigned char hdr[80];
	ipv4_header(d, IPPROTO_TCP, total, hdr);
	Py_buffer payload;
	if (get_payload(payload_obj, &payload) < 0)
		return -1;
	uint64_t l4 = d->l4_sum + (uint64_t)tcp_len + seq + ack + word +
		      payload_sum(payload_obj, &payload) +
		      csum_words((const unsigned char *)PyBytes_AS_STRING(tcp_opts), olen);
	put_be32(hdr + 24, seq);
	put_be32(hdr + 28, ack);
	put_be16(hdr + 32, word);
	put_be16(hdr + 34, 0xFFFF); /* window */
	put_be16(hdr + 36, (unsigned)(0xFFFF - l4 % 0xFFFF));
	put_be16(hdr + 38, 0); /* urgent pointer */
	memcpy(hdr + 40, PyBytes_AS_STRING(tcp_opts), (size_t)olen);
	int rc = epb(buf, ts, hdr, 40 + olen, payload_obj, &payload, total, opts);
	PyBuffer_Release(&payload);
	return rc;
}

PyDoc_STRVAR(tcp_doc,
	     "tcp(buf, d, ts, flags, off, payload, length, opts, tcp_opts)\n--\n\n"
	     "Append one TCP segment's EPB to ``buf`` (a pcapng._Sink).");

static PyObject *fp_tcp(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
	(void)mod;
	if (nargs != 9) {
		PyErr_SetString(PyExc_TypeError, "tcp() takes 9 arguments");
		return NULL;
	}
	PyObject *buf = args[0], *d = args[1], *opts = args[7], *tcp_opts = args[8];
	if (!PyByteArray_Check(buf)) {
		PyErr_SetString(PyExc_TypeError, "buf must be a bytearray");
		return NULL;
	}
	if (check_bytes(opts, "opts") < 0 || check_bytes(tcp_opts, "tcp_opts") < 0)
		return NULL;
	double ts = PyFloat_AsDouble(args[2]);
	long flags = PyLong_AsLong(args[3]);
	uint64_t off = PyLong_AsUnsignedLongLongMask(args[4]);
	Py_ssize_t length = PyLong_AsSsize_t(args[6]);
	if (PyErr_Occurred())
		return NULL;
	if (tcp_block(buf, d, ts, flags, off, args[5], length, opts, tcp_opts) < 0)
		return NULL;
	Py_RETURN_NONE;
}

PyDoc_STRVAR(udp_doc, "udp(buf, d, ts, payload, length, opts)\n--\n\n"
		      "Append one UDP datagram's EPB to ``buf`` (a pcapng._Sink).");

static PyObject *fp_udp(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
	(void)mod;
	if (nargs != 6) {
		PyErr_SetString(PyExc_TypeError, "udp() takes 6 arguments");
		return NULL;
	}
	PyObject *buf = args[0], *d = args[1], *opts = args[5];
	if (!PyByteArray_Check(buf)) {
		PyErr_SetString(PyExc_TypeError, "buf must be a bytearray");
		return NULL;
	}
	if (check_bytes(opts, "opts") < 0)
		return NULL;
	double ts = PyFloat_AsDouble(args[2]);
	Py_ssize_t length = PyLong_AsSsize_t(args[4]);
	if (PyErr_Occurred())
		return NULL;
	Py_ssize_t udp_len = 8 + length;
	Py_ssize_t total = 20 + udp_len;
	unsigned char hdr[28];
	Direction *dir = as_direction(d);
	if (dir == NULL)
		return NULL;
	ipv4_header(dir, IPPROTO_UDP, total, hdr);
	Py_buffer payload;
	if (get_payload(args[3], &payload) < 0)
		return NULL;
	uint64_t l4 = dir->l4_sum + 2 * (uint64_t)udp_len + payload_sum(args[3], &payload);
	put_be16(hdr + 24, (unsigned)udp_len);
	put_be16(hdr + 26, (unsigned)(0xFFFF - l4 % 0xFFFF));
	int rc = epb(buf, ts, hdr, 28, args[3], &payload, total, opts);
	PyBuffer_Release(&payload);
	if (rc < 0)
		return NULL;
	Py_RETURN_NONE;
}

/* ------------------------------------------------------------ ring records */

/*
 * Records are built without running the dataclass's generated __init__ (which
 * only stores its arguments, ~0.3 us of the ~2 us per record): the 17 values
 * go straight into the slots; the three CaptureStats counters are updated in
 * their slots too.  Module initialisation checks that Record still has
 * exactly these fields, in this order, that both classes keep them in plain
 * slots and that neither has a __post_init__, and fails the import otherwise.
 */
#define RECORD_FIELDS 20
static const char *const record_fields[RECORD_FIELDS] = {
	"ts",	 "pid",	  "tid",    "uid",	"comm",	   "inode",   "peer_inode",
	"sock_type", "path",	  "path_is_own", "offset", "length", "data",	"lost",
	"flags",	 "kind",	  "peer_pid",	   "sock_id",	"peer_id", "peer_comm",
};
static Py_ssize_t record_offsets[RECORD_FIELDS];
enum { R_TS = 0, R_PID, R_TID, R_UID, R_COMM, R_INODE, R_PEER_INODE, R_OFFSET = 10, R_LENGTH,
       R_DATA, R_FLAGS = 14, R_KIND, R_PEER_PID, R_SOCK_ID, R_PEER_ID, R_PEER_COMM };
#define RSLOT(r, i) (*(PyObject **)((char *)(r) + record_offsets[i]))

#define STATS_FIELDS 3
static const char *const stats_fields[STATS_FIELDS] = {"records", "bytes", "bytes_kept"};
static Py_ssize_t stats_offsets[STATS_FIELDS];

/* Offsets of the slots ``names`` of dataclass ``type``; with ``all``, they
 * must be its only fields, in this order. */
static int slot_offsets(PyObject *type, const char *const *names, int n, int all,
			Py_ssize_t *offsets)
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
		PyErr_Format(PyExc_ImportError,
			     "usniff._fastpath: the fields of %R changed; update _fastpath.c", type);
		return -1;
	}
	return 0;
}

/* Record(*args): steals the references in args (all non-NULL). */
static PyObject *new_record(PyObject **args)
{
	PyTypeObject *tp = (PyTypeObject *)Record;
	PyObject *r = tp->tp_alloc(tp, 0);
	if (r == NULL)
		return NULL;
	for (int i = 0; i < RECORD_FIELDS; i++) {
		*(PyObject **)((char *)r + record_offsets[i]) = args[i];
		args[i] = NULL;
	}
	/*
	 * Its fields are str, bytes, int, float and bool: a Record made here can
	 * be in no reference cycle, so the cyclic GC need not track it.  Tracked,
	 * the records held in a batch and the reorder window were traversed by
	 * every collection their allocation triggered (the GC's share of usniff's
	 * CPU: docs/performance.md).
	 */
	PyObject_GC_UnTrack(r);
	return r;
}

/*
 * Capture's attributes are read from its instance dict directly (borrowed
 * references): ~10 ns each instead of ~25 ns through getattr, a dozen times
 * per record.
 */
static PyObject *attr(PyObject *attrs, PyObject *name)
{
	PyObject *v = PyDict_GetItemWithError(attrs, name);
	if (v == NULL && !PyErr_Occurred())
		PyErr_Format(PyExc_AttributeError, "Capture has no attribute %R", name);
	return v;
}

static PyObject *attr_dict(PyObject *attrs, PyObject *name)
{
	PyObject *v = attr(attrs, name);
	if (v != NULL && !PyDict_Check(v)) {
		PyErr_Format(PyExc_TypeError, "Capture.%U must be a dict", name);
		v = NULL;
	}
	return v;
}

static PyObject *attr_list(PyObject *attrs, PyObject *name)
{
	PyObject *v = attr(attrs, name);
	if (v != NULL && !PyList_Check(v)) {
		PyErr_Format(PyExc_TypeError, "Capture.%U must be a list", name);
		v = NULL;
	}
	return v;
}

/*
 * The Capture attributes handle_record uses, read from the instance dict
 * once per drain instead of seven lookups per record (the lookups were a
 * measurable part of the per-record cost).  Borrowed references: read again
 * (cap_load) after every call into Python code, which may rebind them.
 */
struct cap_attrs {
	PyObject *dict; /* the instance dict; its owner holds the reference */
	PyObject *sock_info, *dest, *in_dest, *last, *batch;
	double clock;
	int packed; /* Capture.packed: common data records become Packed */
};

static int cap_load(struct cap_attrs *ca)
{
	PyObject *d = ca->dict, *clock, *packed;
	if ((ca->sock_info = attr_dict(d, s_sock_info)) == NULL ||
	    (ca->dest = attr_dict(d, s_dest)) == NULL ||
	    (ca->in_dest = attr_dict(d, s_in_dest)) == NULL ||
	    (ca->last = attr_dict(d, s_last)) == NULL ||
	    (ca->batch = attr_list(d, s_batch)) == NULL ||
	    (clock = attr(d, s_clock)) == NULL || (packed = attr(d, s_packed)) == NULL ||
	    (ca->packed = PyObject_IsTrue(packed)) < 0)
		return -1;
	ca->clock = PyFloat_AsDouble(clock);
	return ca->clock == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* self.NAME(*args) (args[0] is self), then the attributes read again */
static PyObject *cap_call(struct cap_attrs *ca, PyObject *name, PyObject *const *args, size_t n)
{
	PyObject *res = PyObject_VectorcallMethod(name, args, n | PY_VECTORCALL_ARGUMENTS_OFFSET,
						  NULL);
	if (res != NULL && cap_load(ca) < 0)
		Py_CLEAR(res);
	return res;
}

/* Unpack a tuple of n items into out (borrowed references). */
static int unpack(PyObject *t, Py_ssize_t n, PyObject **out)
{
	if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != n) {
		PyErr_Format(PyExc_TypeError, "expected a %zd-tuple", n);
		return -1;
	}
	for (Py_ssize_t i = 0; i < n; i++)
		out[i] = PyTuple_GET_ITEM(t, i);
	return 0;
}

/* CaptureStats.records/bytes/bytes_kept += n, straight in the slots. */
static int stats_add(PyObject *st, const uint64_t *n)
{
	if (!Py_IS_TYPE(st, (PyTypeObject *)CaptureStats)) {
		PyErr_SetString(PyExc_TypeError, "Capture.stats must be a CaptureStats");
		return -1;
	}
	for (int i = 0; i < STATS_FIELDS; i++) {
		PyObject *v = slot(st, stats_offsets[i], stats_fields[i]);
		PyObject *inc = v == NULL ? NULL : PyLong_FromUnsignedLongLong(n[i]);
		PyObject *sum = inc == NULL ? NULL : PyNumber_Add(v, inc);
		Py_XDECREF(inc);
		if (sum == NULL)
			return -1;
		Py_SETREF(*(PyObject **)((char *)st + stats_offsets[i]), sum);
	}
	return 0;
}

/*
 * The comm's name (decoded up to its NUL, errors replaced), from a small
 * direct-mapped cache keyed by the 16 raw bytes (new reference).
 */
#define COMM_CACHE 64
static struct {
	char comm[16];
	PyObject *name;
} comm_cache[COMM_CACHE];

static PyObject *comm_name(const char *comm)
{
	uint64_t a, b;
	memcpy(&a, comm, 8);
	memcpy(&b, comm + 8, 8);
	uint64_t h = (a ^ (b * 0x9E3779B97F4A7C15ull)) * 0x9E3779B97F4A7C15ull;
	unsigned slot = (unsigned)(h >> 58) % COMM_CACHE;
	if (comm_cache[slot].name != NULL && memcmp(comm_cache[slot].comm, comm, 16) == 0)
		return Py_NewRef(comm_cache[slot].name);
	PyObject *name = PyUnicode_DecodeUTF8(comm, (Py_ssize_t)strnlen(comm, 16), "replace");
	if (name == NULL)
		return NULL;
	memcpy(comm_cache[slot].comm, comm, 16);
	Py_XSETREF(comm_cache[slot].name, Py_NewRef(name));
	return name;
}

/*
 * A Python int for a value that repeats from record to record (inode, pid,
 * tid...), reused from a small direct-mapped cache (new reference): the
 * allocations and frees of these ints, Record field by field, were a fifth of
 * the collector's CPU at redis-benchmark -P 1 (perf).
 */
#define ID_CACHE 256
static struct {
	uint64_t v;
	PyObject *o;
} id_cache[ID_CACHE];

static PyObject *id_int(uint64_t v)
{
	unsigned slot = (unsigned)((v * 0x9E3779B97F4A7C15ull) >> 56) % ID_CACHE;
	if (id_cache[slot].o != NULL && id_cache[slot].v == v)
		return Py_NewRef(id_cache[slot].o);
	PyObject *o = PyLong_FromUnsignedLongLong(v);
	if (o == NULL)
		return NULL;
	id_cache[slot].v = v;
	Py_XSETREF(id_cache[slot].o, Py_NewRef(o));
	return o;
}

/* ------------------------------------------------------------ packed records */

/*
 * A data record as the pcapng output frames it: the ring record's header as
 * it came and the payload inline, one object instead of a Record and the
 * float, int and bytes objects of its fields.  The drain makes one instead of
 * a Record when every output of the capture takes them (Capture.packed: the
 * CLI's -w without --stats, the Wireshark extcap) and the record is the
 * common kind: data from a connected stream socket whose address is known.
 * They are ordered with the Records (Capture._release reads .ts) and framed by
 * write_batch from their C fields; .record() gives the equivalent Record for
 * everything else (a new flow, a changed comment, a gap, a close).
 * Why: allocating and freeing a Record and its field objects was most of the
 * collector's cost per record under -w (figures: docs/performance.md,
 * "Collector").
 */
static Packed *packed_new(const struct usniff_event *ev, double ts, const char *body,
			  Py_ssize_t n, PyObject *path, PyObject *is_own)
{
	Packed *p = PyObject_NewVar(Packed, &PackedType, n);
	if (p == NULL)
		return NULL;
	p->ev = *ev;
	p->ts = ts;
	p->path = Py_NewRef(path);
	p->path_is_own = Py_NewRef(is_own);
	memcpy(p->data, body, (size_t)n);
	p->sum = csum_words((const unsigned char *)p->data, n);
	return p;
}

static void packed_dealloc(PyObject *self)
{
	Packed *p = (Packed *)self;
	Py_DECREF(p->path);
	Py_DECREF(p->path_is_own);
	PyObject_Free(self);
}

static int packed_getbuffer(PyObject *self, Py_buffer *view, int flags)
{
	return PyBuffer_FillInfo(view, self, ((Packed *)self)->data, Py_SIZE(self), 1, flags);
}

static Py_ssize_t packed_len(PyObject *self)
{
	return Py_SIZE(self);
}

static PyObject *sock_type_name(uint16_t type)
{
	PyObject *st = PyLong_FromLong(type);
	if (st == NULL)
		return NULL;
	PyObject *s = PyDict_GetItemWithError(SOCK_TYPES, st);
	s = s != NULL ? Py_NewRef(s) : PyErr_Occurred() ? NULL : PyObject_Str(st);
	Py_DECREF(st);
	return s;
}

/*
 * Record(ts, pid, tid, uid, comm, inode, peer_inode, sock_type, path,
 * path_is_own, offset, length, data, lost, flags, kind, peer_pid, sock_id,
 * peer_id, peer_comm) of a ring
 * record (the drain; Packed.record): body[0:n] is its payload; a loss record
 * has none and lost == length.
 */
static PyObject *make_record(const struct usniff_event *ev, double ts, const char *body,
			     Py_ssize_t n, PyObject *path, PyObject *is_own, PyObject *flags)
{
	int lost = ev->kind == USNIFF_EV_LOST;
	PyObject *args[RECORD_FIELDS] = {
		PyFloat_FromDouble(ts),
		id_int(ev->pid),
		id_int(ev->tid),
		id_int(ev->uid),
		comm_name(ev->comm),
		id_int(ev->inode),
		id_int(ev->peer_inode),
		sock_type_name(ev->sock_type),
		Py_NewRef(path),
		Py_NewRef(is_own),
		PyLong_FromUnsignedLongLong(ev->offset),
		PyLong_FromUnsignedLong(ev->len),
		lost ? Py_NewRef(empty_bytes) : PyBytes_FromStringAndSize(body, n),
		lost ? PyLong_FromUnsignedLong(ev->len) : PyLong_FromLong(0),
		Py_NewRef(flags),
		Py_NewRef(lost ? s_lost : s_data),
		id_int(ev->peer_pid),
		id_int(ev->sock_id),
		id_int(ev->peer_id),
		comm_name(ev->peer_comm),
	};
	for (int i = 0; i < RECORD_FIELDS; i++)
		if (args[i] == NULL) {
			for (int j = 0; j < RECORD_FIELDS; j++)
				Py_XDECREF(args[j]);
			return NULL;
		}
	return new_record(args);
}

PyDoc_STRVAR(packed_record_doc, "record()\n--\n\nThe equivalent events.Record.");

static PyObject *packed_record(PyObject *self, PyObject *unused)
{
	(void)unused;
	Packed *p = (Packed *)self;
	PyObject *flags = PyLong_FromLong(p->ev.flags);
	if (flags == NULL)
		return NULL;
	PyObject *r = make_record(&p->ev, p->ts, p->data, Py_SIZE(p), p->path, p->path_is_own,
				  flags);
	Py_DECREF(flags);
	return r;
}

static PyMethodDef packed_methods[] = {
	{"record", packed_record, METH_NOARGS, packed_record_doc},
	{NULL, NULL, 0, NULL},
};

static PyMemberDef packed_members[] = {
	{"ts", T_DOUBLE, offsetof(Packed, ts), READONLY, "wall clock, epoch seconds"},
	{"inode", T_ULONGLONG, offsetof(Packed, ev.inode), READONLY, "the sending socket's inode"},
	{NULL, 0, 0, 0, NULL},
};

static PyBufferProcs packed_as_buffer = {.bf_getbuffer = packed_getbuffer};
static PySequenceMethods packed_as_sequence = {.sq_length = packed_len};

static PyTypeObject PackedType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "usniff._fastpath.Packed",
	.tp_basicsize = offsetof(Packed, data),
	.tp_itemsize = 1,
	.tp_dealloc = packed_dealloc,
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = PyDoc_STR("A data record for the pcapng output: its payload is the buffer."),
	.tp_methods = packed_methods,
	.tp_members = packed_members,
	.tp_as_buffer = &packed_as_buffer,
	.tp_as_sequence = &packed_as_sequence,
};

/*
 * CaptureStats records, bytes and bytes_kept are summed in ``acc`` and added
 * to the Python object once per drain (stats_flush): three int additions per
 * record cost as much as building the Record's fields.  ``rc`` < 0: a record
 * failed and its error is set; what was handled before it is still counted,
 * and that first error is the one reported.  Returns rc, or -1 if the
 * addition itself fails.
 */
static int stats_flush(PyObject *attrs, uint64_t *acc, int rc)
{
	PyObject *obj, *type = NULL, *value = NULL, *tb = NULL;
	if (acc[0] == 0)
		return rc;
	if (rc < 0)
		PyErr_Fetch(&type, &value, &tb);
	int err = (obj = attr(attrs, s_stats)) == NULL || stats_add(obj, acc) < 0;
	memset(acc, 0, STATS_FIELDS * sizeof(*acc));
	if (rc < 0) {
		if (err)
			PyErr_Clear();
		PyErr_Restore(type, value, tb);
	}
	return err ? -1 : rc;
}

static int handle_record(PyObject *self, struct cap_attrs *ca, const struct usniff_event *ev,
			 const char *body, Py_ssize_t body_len, uint64_t *acc)
{
	PyObject *id = NULL, *ino = NULL, *peer = NULL, *info = NULL, *path, *is_own,
		 *flags = NULL, *dest_info = NULL, *receiver = Py_None, *r = NULL;
	int rc = -1, lost = ev->kind == USNIFF_EV_LOST;
	Py_ssize_t n = (Py_ssize_t)ev->caplen < body_len ? (Py_ssize_t)ev->caplen : body_len;
	double ts = ca->clock + (double)ev->ts_ns / 1e9;

	id = id_int(ev->sock_id);
	flags = PyLong_FromLong(ev->flags);
	if (id == NULL || flags == NULL)
		goto out;

	/* path, is_own = self._sock_info.get(id) or self._lookup(id, inode, peer_inode) */
	info = PyDict_GetItemWithError(ca->sock_info, id);
	Py_XINCREF(info);
	if (info == NULL) {
		if (PyErr_Occurred() || (ino = id_int(ev->inode)) == NULL ||
		    (peer = id_int(ev->peer_inode)) == NULL)
			goto out;
		PyObject *a[4] = {self, id, ino, peer};
		if ((info = cap_call(ca, s_lookup, a, 4)) == NULL)
			goto out;
	}
	PyObject *pi[2];
	if (unpack(info, 2, pi) < 0)
		goto out;
	path = pi[0];
	is_own = pi[1];

	if (ca->packed && !lost && ev->peer_id && ev->sock_type == SOCK_STREAM &&
	    !PyDict_GET_SIZE(ca->dest) && !PyDict_GET_SIZE(ca->in_dest)) {
		if ((r = (PyObject *)packed_new(ev, ts, body, n, path, is_own)) == NULL)
			goto out;
	} else {
		/* datagram destinations, only while one is known */
		if (PyDict_GET_SIZE(ca->dest) || PyDict_GET_SIZE(ca->in_dest)) {
			PyObject *a[5] = {self, id, path, is_own, flags};
			dest_info = cap_call(ca, s_destination, a, 5);
			PyObject *di[4];
			if (dest_info == NULL || unpack(dest_info, 4, di) < 0)
				goto out;
			path = di[0];
			is_own = di[1];
			Py_SETREF(flags, Py_NewRef(di[2]));
			receiver = di[3];
		}
		if ((r = make_record(ev, ts, body, n, path, is_own, flags)) == NULL)
			goto out;
		/* the receiver an unconnected datagram was sent to: its inode, pid, comm */
		if (receiver != Py_None) {
			static const int fields[3] = {R_PEER_INODE, R_PEER_PID, R_PEER_COMM};
			PyObject *rv[3];
			if (unpack(receiver, 3, rv) < 0)
				goto out;
			for (int i = 0; i < 3; i++)
				Py_SETREF(RSLOT(r, fields[i]), Py_NewRef(rv[i]));
		}
	}

	if (lost) {
		PyObject *length = PyLong_FromUnsignedLong(ev->len);
		PyObject *a[3] = {self, r, length};
		PyObject *res = length == NULL ? NULL : cap_call(ca, s_count_loss, a, 3);
		Py_XDECREF(length);
		if (res == NULL)
			goto out;
		Py_DECREF(res);
	} else {
		acc[0] += 1;
		acc[1] += ev->len;
		acc[2] += ev->caplen;
	}
	if (PyList_Append(ca->batch, r) < 0)
		goto out;
	rc = PyDict_SetItem(ca->last, id, r);
out:
	Py_XDECREF(r);
	Py_XDECREF(dest_info);
	Py_XDECREF(info);
	Py_XDECREF(flags);
	Py_XDECREF(peer);
	Py_XDECREF(ino);
	Py_XDECREF(id);
	return rc;
}

/* self._announce(rec): an EV_SOCK or EV_DEST record, as the Python object rec. */
static int announce(PyObject *self, struct cap_attrs *ca, PyObject *rec)
{
	PyObject *a[2] = {self, rec};
	PyObject *res = cap_call(ca, s_announce, a, 2);
	Py_XDECREF(res);
	return res == NULL ? -1 : 0;
}

/*
 * One ring record (buf[0:len]) -> a Record in self._batch, or to _announce.
 * ``obj`` is the record as a Python object for _announce; NULL: a read-only
 * memoryview of buf is made for the call and released after it (the ring's
 * memory is reused once the consumer position moves past the record).
 * ``ca`` holds self's attributes (cap_load).
 */
static int handle_one(PyObject *self, struct cap_attrs *ca, const char *buf, Py_ssize_t len,
		      PyObject *obj, uint64_t *acc)
{
	struct usniff_event ev;
	if (len < (Py_ssize_t)sizeof ev) {
		PyErr_Format(PyExc_ValueError, "ring record of %zd bytes, shorter than its header",
			     len);
		return -1;
	}
	memcpy(&ev, buf, sizeof ev);
	if (ev.kind != USNIFF_EV_SOCK && ev.kind != USNIFF_EV_DEST)
		return handle_record(self, ca, &ev, buf + sizeof ev, len - (Py_ssize_t)sizeof ev,
				     acc);
	if (obj != NULL)
		return announce(self, ca, obj);
	PyObject *view = PyMemoryView_FromMemory((char *)buf, len, PyBUF_READ);
	if (view == NULL)
		return -1;
	int rc = announce(self, ca, view);
	PyObject *res = PyObject_CallMethodNoArgs(view, s_release);
	if (res == NULL) /* BufferError: _announce kept a view of the ring */
		rc = -1;
	Py_XDECREF(res);
	Py_DECREF(view);
	return rc;
}

PyDoc_STRVAR(handle_doc,
	     "_handle(rec)\n--\n\n"
	     "One ring record (a buffer valid only during the call) -> a Record in\n"
	     "``self._batch``; EV_SOCK/EV_DEST records go to ``self._announce(rec)``.\n"
	     "The capture calls it through drain(); tests and benchmarks directly.");

static PyObject *fp_handle(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	if (nargs != 1) {
		PyErr_SetString(PyExc_TypeError, "_handle() takes 1 argument");
		return NULL;
	}
	Py_buffer view;
	if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
		return NULL;
	int rc = -1;
	struct cap_attrs ca = {.dict = PyObject_GenericGetDict(self, NULL)};
	if (ca.dict != NULL) {
		uint64_t acc[STATS_FIELDS] = {0};
		rc = cap_load(&ca) < 0 ? -1 : handle_one(self, &ca, view.buf, view.len, args[0], acc);
		rc = stats_flush(ca.dict, acc, rc);
		Py_DECREF(ca.dict);
	}
	PyBuffer_Release(&view);
	if (rc < 0)
		return NULL;
	Py_RETURN_NONE;
}

static PyMethodDef handler_methods[] = {
	{"_handle", (PyCFunction)(void (*)(void))fp_handle, METH_FASTCALL, handle_doc},
	{NULL, NULL, 0, NULL},
};

static PyTypeObject EventHandler = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "usniff._fastpath.EventHandler",
	.tp_basicsize = sizeof(PyObject),
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
	.tp_doc = PyDoc_STR("Base of capture.Capture: its per-record _handle, in C."),
	.tp_methods = handler_methods,
	.tp_new = PyType_GenericNew,
};

/* --------------------------------------------------------------- ring walk */

/*
 * The BPF ring buffer, read from its memory mapping (kernel/bpf/ringbuf.c;
 * ringbuf.py maps it): ``cons`` is the consumer page (we write the consumer
 * position at its start), ``prod`` the producer page followed by the data
 * pages mapped twice in a row, so a record that wraps is still contiguous.
 * Each record starts with an 8-byte header, u32 len (bit 31 busy, bit 30
 * discarded) and u32 page offset; records are 8-byte aligned.
 *
 * As libbpf's ringbuf.c does: the producer position and each record header are
 * read with acquire order (the record's contents are read after its header
 * says it is committed), the consumer position is stored with release order
 * (the record is read before the kernel may reuse its space), as one aligned
 * 8-byte store: a byte-wise store once made the kernel see a half-written
 * position, the ring full, and drop records.
 */
#define RING_BUSY (1u << 31)
#define RING_DISCARD (1u << 30)
#define RING_HDR 8
#define RING_RELEASE (1u << 20) /* bytes handled between two stores of the consumer position */

PyDoc_STRVAR(drain_doc,
	     "drain(handler, cons, prod, limit)\n--\n\n"
	     "Hand each committed record of a BPF ring buffer to ``handler._handle``\n"
	     "(the C code, no Python call per record).  ``cons``: the consumer page\n"
	     "(writable buffer); ``prod``: the producer page then the data area twice.\n"
	     "Stops at a record still being written, or after ``limit`` bytes; skips\n"
	     "discarded records.  Publishes the consumer position every RELEASE bytes\n"
	     "and at the end, also when a callback raises (up to the last record\n"
	     "handled).  Returns the number of bytes of ring consumed.");

static PyObject *fp_drain(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
	(void)mod;
	if (nargs != 4) {
		PyErr_SetString(PyExc_TypeError, "drain() takes 4 arguments");
		return NULL;
	}
	PyObject *self = args[0];
	if (!PyObject_TypeCheck(self, &EventHandler)) {
		PyErr_SetString(PyExc_TypeError, "drain(): handler must be an EventHandler");
		return NULL;
	}
	uint64_t limit = PyLong_AsUnsignedLongLong(args[3]);
	if (limit == (uint64_t)-1 && PyErr_Occurred())
		return NULL;
	Py_buffer cv, pv;
	if (PyObject_GetBuffer(args[1], &cv, PyBUF_WRITABLE) < 0)
		return NULL;
	if (PyObject_GetBuffer(args[2], &pv, PyBUF_SIMPLE) < 0) {
		PyBuffer_Release(&cv);
		return NULL;
	}
	struct cap_attrs ca = {NULL};
	PyObject *result = NULL;
	uint64_t page = (uint64_t)cv.len, size = ((uint64_t)pv.len - page) / 2;
	if (page < 8 || page % 8 || (uint64_t)pv.len != page + 2 * size || size < 8 ||
	    (size & (size - 1)) || (uintptr_t)cv.buf % 8 || (uintptr_t)pv.buf % 8) {
		PyErr_SetString(PyExc_ValueError,
				"drain(): not a ring mapping (cons: one page; prod: one page, "
				"then twice a power-of-two data size)");
		goto out;
	}
	if ((ca.dict = PyObject_GenericGetDict(self, NULL)) == NULL || cap_load(&ca) < 0)
		goto out;
	uint64_t *cons_pos = cv.buf;
	const uint64_t *prod_pos = pv.buf;
	const char *data = (const char *)pv.buf + page;
	uint64_t mask = size - 1;
	uint64_t start = __atomic_load_n(cons_pos, __ATOMIC_RELAXED); /* only we write it */
	uint64_t prod = __atomic_load_n(prod_pos, __ATOMIC_ACQUIRE);
	uint64_t cons = start, published = start, acc[STATS_FIELDS] = {0};
	uint64_t end = prod > cons && prod - cons > limit ? cons + limit : prod;
	int rc = 0;
	while (cons < end) {
		uint64_t off = cons & mask;
		uint32_t hdr = __atomic_load_n((const uint32_t *)(data + off), __ATOMIC_ACQUIRE);
		if (hdr & RING_BUSY)
			break;
		uint32_t n = hdr & ~(RING_BUSY | RING_DISCARD);
		if (n > size - RING_HDR) {
			PyErr_Format(PyExc_ValueError, "ring record of %u bytes in a %llu-byte ring",
				     n, (unsigned long long)size);
			rc = -1;
			break;
		}
		if (!(hdr & RING_DISCARD) &&
		    handle_one(self, &ca, data + off + RING_HDR, n, NULL, acc) < 0) {
			rc = -1;
			break;
		}
		cons += ((uint64_t)n + RING_HDR + 7) & ~(uint64_t)7;
		if (cons - published >= RING_RELEASE) {
			__atomic_store_n(cons_pos, cons, __ATOMIC_RELEASE);
			published = cons;
			/* a signal handler raised, or ran Python code: attributes read again */
			if (PyErr_CheckSignals() < 0 || cap_load(&ca) < 0) {
				rc = -1;
				break;
			}
		}
	}
	if (cons != published)
		__atomic_store_n(cons_pos, cons, __ATOMIC_RELEASE);
	rc = stats_flush(ca.dict, acc, rc);
	if (rc == 0)
		result = PyLong_FromUnsignedLongLong(cons - start);
out:
	Py_XDECREF(ca.dict);
	PyBuffer_Release(&pv);
	PyBuffer_Release(&cv);
	return result;
}

/* ------------------------------------------------------------ pcapng batch */


/* A Python int as a long long; 0 with *ok = 0 when it is not one or too large. */
static long long as_ll(PyObject *v, int *ok)
{
	int overflow = 0;
	long long x = (v != NULL && PyLong_CheckExact(v)) ? PyLong_AsLongLongAndOverflow(v, &overflow)
							  : (*ok = 0);
	if (overflow || (x == -1 && PyErr_Occurred())) {
		PyErr_Clear();
		*ok = 0;
	}
	return x;
}

#define DSLOT(d, f) (*(PyObject **)((char *)(d) + dir_offsets[f]))
#define COMMENT_KEY 6 /* pcapng._Dir.comment_key: pid, tid, uid, comm, peer_pid, peer_comm */

/* The direction of socket ``sock_id`` if it may be framed here (borrowed), with
 * its comment key and options and next offset; NULL with no error if not. */
static PyObject *fast_dir(PyObject *dirs, PyObject *sock_id, PyObject **key, PyObject **opts,
			  long long *next_off)
{
	PyObject *d = PyDict_GetItemWithError(dirs, sock_id);
	if (d == NULL || dir_get(d, D_PEER) == NULL) /* dir_get loads the slot offsets */
		return NULL;
	PyObject *note = DSLOT(d, D_NOTE);
	*key = DSLOT(d, D_COMMENT_KEY);
	*opts = DSLOT(d, D_COMMENT_OPTS);
	if (((Direction *)d)->proto != IPPROTO_TCP || note == NULL || !PyUnicode_CheckExact(note) ||
	    PyUnicode_GET_LENGTH(note) != 0 || *key == NULL || !PyTuple_CheckExact(*key) ||
	    PyTuple_GET_SIZE(*key) != COMMENT_KEY || *opts == NULL || !PyBytes_CheckExact(*opts))
		return NULL;
	*next_off = (long long)((Direction *)d)->next_off;
	return d;
}

/* The segment of ``length`` stream bytes at ``off`` (payload: the buffer
 * ``data``), if one segment with no gap before it. */
static int fast_segment(PyObject *buf, PyObject *d, double ts, long long flags, long long off,
			long long length, long long next_off, PyObject *data, PyObject *opts,
			int *done)
{
	if (length < 0 || length > MAX_SEGMENT || off < 0 || off > next_off)
		return 0;
	long tcp_flags = TCP_ACK | ((flags & FLAG_MSG_END) ? TCP_PSH : 0);
	if (tcp_block(buf, d, ts, tcp_flags, (uint64_t)off, data, (Py_ssize_t)length, opts,
		      empty_bytes) < 0)
		return -1;
	*done = 1;
	if (off + length > next_off)
		((Direction *)d)->next_off = (unsigned long long)(off + length);
	return 0;
}

/*
 * The common record of a batch is framed without a Python call
 * (PcapngOutput.write): data on a known TCP direction, one segment (length
 * <= MAX_SEGMENT), no gap before it (offset <= next_off), no note pending,
 * the same comment key (pid, tid, uid, comm, peer_pid, peer_comm) as the direction's
 * previous packet (so its cached comment_opts); write_batch has checked that
 * no rotation is due.  That is Framer._segments' single-segment branch
 * exactly.  *done = 0: not that case, write_batch hands the record to
 * Framer.add.
 */
static int fast_record(PyObject *rec, PyObject *dirs, PyObject *buf, double ts, int *done)
{
	int ok = 1;
	*done = 0;
	PyObject *kind = RSLOT(rec, R_KIND), *id = RSLOT(rec, R_SOCK_ID), *data = RSLOT(rec, R_DATA);
	if (kind == NULL || id == NULL || data == NULL)
		return 0;
	if (kind != s_data && !(PyUnicode_CheckExact(kind) && PyUnicode_Compare(kind, s_data) == 0))
		return 0;
	if (as_ll(RSLOT(rec, R_PEER_ID), &ok) == 0 || !ok) /* unconnected: (sock_id, path) keys */
		return 0;
	PyObject *key, *opts;
	long long next_off;
	PyObject *d = fast_dir(dirs, id, &key, &opts, &next_off);
	if (d == NULL)
		return PyErr_Occurred() ? -1 : 0;
	long long length = as_ll(RSLOT(rec, R_LENGTH), &ok), off = as_ll(RSLOT(rec, R_OFFSET), &ok);
	long long flags = as_ll(RSLOT(rec, R_FLAGS), &ok);
	if (!ok)
		return 0;
	static const int key_fields[COMMENT_KEY] = {R_PID,  R_TID,	R_UID,
						    R_COMM, R_PEER_PID, R_PEER_COMM};
	for (int i = 0; i < COMMENT_KEY; i++) {
		PyObject *v = RSLOT(rec, key_fields[i]);
		if (v == NULL)
			return 0;
		int eq = PyObject_RichCompareBool(v, PyTuple_GET_ITEM(key, i), Py_EQ);
		if (eq <= 0)
			return eq;
	}
	return fast_segment(buf, d, ts, flags, off, length, next_off, data, opts, done);
}

/* fast_record for a Packed: its fields are C values already. */
static int fast_packed(Packed *p, PyObject *dirs, PyObject *buf, int *done)
{
	*done = 0;
	PyObject *id = id_int(p->ev.sock_id), *key, *opts;
	if (id == NULL)
		return -1;
	long long next_off;
	PyObject *d = fast_dir(dirs, id, &key, &opts, &next_off);
	Py_DECREF(id);
	if (d == NULL)
		return PyErr_Occurred() ? -1 : 0;
	const uint32_t ids[COMMENT_KEY] = {p->ev.pid, p->ev.tid, p->ev.uid, 0, p->ev.peer_pid, 0};
	for (int i = 0; i < COMMENT_KEY; i++) {
		PyObject *v = PyTuple_GET_ITEM(key, i);
		if (i == 3 || i == 5) { /* comms: the cached names, usually the very objects */
			PyObject *comm = comm_name(i == 3 ? p->ev.comm : p->ev.peer_comm);
			int eq = comm == NULL ? -1 : PyObject_RichCompareBool(comm, v, Py_EQ);
			Py_XDECREF(comm);
			if (eq <= 0)
				return eq;
		} else if (!PyLong_CheckExact(v) || PyLong_AsUnsignedLongLongMask(v) != ids[i]) {
			PyErr_Clear();
			return 0;
		}
	}
	return fast_segment(buf, d, p->ts, p->ev.flags, (long long)p->ev.offset, p->ev.len,
			    next_off, (PyObject *)p, opts, done);
}

PyDoc_STRVAR(write_batch_doc,
	     "write_batch(framer, buf, batch, start, room, deadline)\n--\n\n"
	     "Frame batch[start:] into ``buf`` (PcapngOutput.write): common records\n"
	     "here (fast_record in _fastpath.c), the others through ``framer.add``.\n"
	     "Stops at the first record that needs a rotation (``buf.size() > room`` or\n"
	     "``ts >= deadline``) or is not a Record; returns its index (len(batch) when\n"
	     "all are done).");

static PyObject *fp_write_batch(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
	(void)mod;
	if (nargs != 6) {
		PyErr_SetString(PyExc_TypeError, "write_batch() takes 6 arguments");
		return NULL;
	}
	PyObject *framer = args[0], *buf = args[1];
	if (!PyByteArray_Check(buf)) {
		PyErr_SetString(PyExc_TypeError, "buf must be a bytearray");
		return NULL;
	}
	Py_ssize_t i = PyLong_AsSsize_t(args[3]);
	double room = PyFloat_AsDouble(args[4]), deadline = PyFloat_AsDouble(args[5]);
	if (PyErr_Occurred())
		return NULL;
	PyObject *seq = PySequence_Fast(args[2], "batch must be a sequence"), *add = NULL;
	if (seq == NULL)
		return NULL;
	PyObject *dirs = PyObject_GetAttr(framer, s_dirs);
	if (dirs == NULL || !PyDict_Check(dirs)) {
		if (dirs != NULL)
			PyErr_SetString(PyExc_TypeError, "Framer._dirs must be a dict");
		goto fail;
	}
	add = PyObject_GetAttr(framer, s_add);
	if (add == NULL)
		goto fail;
	Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), packets = 0;
	/* buf.parts_size, read again only after a splice or Framer.add changed it,
	 * not once per record: only those can change it */
	Py_ssize_t parts_size = -1;
	int done, rc = 0;
	for (; i < n; i++) {
		PyObject *rec = PySequence_Fast_GET_ITEM(seq, i), *ts_obj;
		int packed = Py_IS_TYPE(rec, &PackedType);
		double ts;
		if (packed) {
			ts = ((Packed *)rec)->ts;
		} else {
			if (!Py_IS_TYPE(rec, (PyTypeObject *)Record) ||
			    (ts_obj = RSLOT(rec, R_TS)) == NULL)
				break;
			ts = PyFloat_AsDouble(ts_obj);
			if (ts == -1.0 && PyErr_Occurred()) {
				PyErr_Clear();
				break;
			}
		}
		if (parts_size < 0) {
			PyObject *parts = PyObject_GetAttr(buf, s_parts_size);
			parts_size = parts == NULL ? -1 : PyLong_AsSsize_t(parts);
			Py_XDECREF(parts);
			if (parts_size < 0) {
				if (!PyErr_Occurred())
					PyErr_SetString(PyExc_ValueError, "_Sink.parts_size < 0");
				rc = -1;
				break;
			}
		}
		if ((double)(parts_size + PyByteArray_GET_SIZE(buf)) > room || ts >= deadline)
			break; /* rotation or write-out due: PcapngOutput.write */
		unsigned long spliced = splices;
		rc = packed ? fast_packed((Packed *)rec, dirs, buf, &done)
			    : fast_record(rec, dirs, buf, ts, &done);
		if (rc < 0)
			break;
		if (splices != spliced)
			parts_size = -1;
		if (done) {
			packets++;
			continue;
		}
		parts_size = -1;
		PyObject *full = packed ? packed_record(rec, NULL) : Py_NewRef(rec);
		PyObject *call[2] = {buf, full}; /* the rest: Framer.add */
		PyObject *r = full == NULL ? NULL : PyObject_Vectorcall(add, call, 2, NULL);
		Py_XDECREF(full);
		if (r == NULL) {
			rc = -1;
			break;
		}
		Py_DECREF(r);
	}
	if (packets) {
		PyObject *count = PyObject_GetAttr(framer, s_packets);
		PyObject *add = count == NULL ? NULL : PyLong_FromSsize_t(packets);
		PyObject *sum = add == NULL ? NULL : PyNumber_Add(count, add);
		Py_XDECREF(count);
		Py_XDECREF(add);
		if (sum == NULL || PyObject_SetAttr(framer, s_packets, sum) < 0)
			rc = -1;
		Py_XDECREF(sum);
	}
	if (rc < 0)
		goto fail;
	Py_DECREF(add);
	Py_DECREF(dirs);
	Py_DECREF(seq);
	return PyLong_FromSsize_t(i);
fail:
	Py_XDECREF(add);
	Py_XDECREF(dirs);
	Py_DECREF(seq);
	return NULL;
}

/* ------------------------------------------------------------------ module */

static PyMethodDef module_methods[] = {
	{"tcp", (PyCFunction)(void (*)(void))fp_tcp, METH_FASTCALL, tcp_doc},
	{"udp", (PyCFunction)(void (*)(void))fp_udp, METH_FASTCALL, udp_doc},
	{"drain", (PyCFunction)(void (*)(void))fp_drain, METH_FASTCALL, drain_doc},
	{"write_batch", (PyCFunction)(void (*)(void))fp_write_batch, METH_FASTCALL, write_batch_doc},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "usniff._fastpath",
	.m_doc = "The collector's per-record hot path in C (see _fastpath.c).",
	.m_size = -1,
	.m_methods = module_methods,
};

#define INTERN(var, text)                                        \
	do {                                                     \
		if ((var = PyUnicode_InternFromString(text)) == NULL) \
			return NULL;                             \
	} while (0)

PyMODINIT_FUNC PyInit__fastpath(void)
{
	INTERN(s_splice, "splice");
	INTERN(s_sock_info, "_sock_info");
	INTERN(s_dest, "_dest");
	INTERN(s_in_dest, "_in_dest");
	INTERN(s_clock, "_clock");
	INTERN(s_stats, "stats");
	INTERN(s_batch, "_batch");
	INTERN(s_last, "_last");
	INTERN(s_lookup, "_lookup");
	INTERN(s_destination, "_destination");
	INTERN(s_count_loss, "_count_loss");
	INTERN(s_announce, "_announce");
	INTERN(s_data, "data");
	INTERN(s_lost, "lost");
	INTERN(s_release, "release");
	INTERN(s_dirs, "_dirs");
	INTERN(s_packets, "packets");
	INTERN(s_parts_size, "parts_size");
	INTERN(s_add, "add");
	INTERN(s_packed, "packed");
	if ((empty_bytes = PyBytes_FromStringAndSize(NULL, 0)) == NULL)
		return NULL;
	PyObject *events = PyImport_ImportModule("usniff.events");
	if (events == NULL)
		return NULL;
	Record = PyObject_GetAttrString(events, "Record");
	CaptureStats = PyObject_GetAttrString(events, "CaptureStats");
	SOCK_TYPES = PyObject_GetAttrString(events, "SOCK_TYPES");
	Py_DECREF(events);
	if (Record == NULL || CaptureStats == NULL || SOCK_TYPES == NULL)
		return NULL;
	if (slot_offsets(Record, record_fields, RECORD_FIELDS, 1, record_offsets) < 0 ||
	    slot_offsets(CaptureStats, stats_fields, STATS_FIELDS, 0, stats_offsets) < 0)
		return NULL;
	if (!PyDict_Check(SOCK_TYPES)) {
		PyErr_SetString(PyExc_TypeError, "usniff.events.SOCK_TYPES must be a dict");
		return NULL;
	}
	if (PyType_Ready(&EventHandler) < 0 || PyType_Ready(&PackedType) < 0 ||
	    PyType_Ready(&DirectionType) < 0)
		return NULL;
	PyObject *m = PyModule_Create(&module);
	if (m == NULL)
		return NULL;
	if (PyModule_AddObjectRef(m, "EventHandler", (PyObject *)&EventHandler) < 0 ||
	    PyModule_AddObjectRef(m, "Packed", (PyObject *)&PackedType) < 0 ||
	    PyModule_AddObjectRef(m, "Direction", (PyObject *)&DirectionType) < 0 ||
	    PyModule_AddIntConstant(m, "EVENT_SIZE", (long)sizeof(struct usniff_event)) < 0 ||
	    PyModule_AddIntConstant(m, "SOCK_STATE_SIZE", (long)sizeof(struct usniff_sock_state)) < 0 ||
	    PyModule_AddIntConstant(m, "SPLICE_MIN", SPLICE_MIN) < 0 ||
	    PyModule_AddIntConstant(m, "RELEASE", RING_RELEASE) < 0) {
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
