/*
 * usniff.outputs._epb: the pcapng output's packet encoder, in C.
 *
 *  - tcp()/udp(): one whole pcapng Enhanced Packet Block (IPv4 + TCP/UDP
 *    headers with both checksums, payload, padding, options, trailer)
 *    appended to a Sink; payloads of SPLICE_MIN bytes or more are kept by
 *    reference in the Sink (for writev) instead of being copied.  The
 *    Internet checksum is summed here (no numpy).
 *  - segments(): a TCP data record's segments (at most MAX_SEGMENT payload
 *    bytes each, PSH on the last one of a send), advancing the direction's
 *    next offset: the only place a data record is cut into packets.
 *  - write_batch(): the pcapng writer's loop over a batch: the common TCP
 *    record (fast_record, fast_packed) is framed here, the others by the
 *    Python callable it is given (Framer.add).
 *  - Direction: a flow direction's numbers and comment state as C fields
 *    (outputs/pcapng.py's _Dir subclasses it); Sink: the batch buffer.
 *
 * Why C: in Python, framing an EPB per record was what limited the writer
 * (docs/performance.md, "Collector").
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_events.h"

#define MODULE "usniff.outputs._epb"
#define SPLICE_MIN 4096 /* payloads from this size are kept by reference */
#define BT_EPB 6
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define TCP_ACK 0x10
#define TCP_PSH 0x08
#define FLAG_MSG_END USNIFF_F_MSG_END /* events.FLAG_MSG_END */
#define MAX_SEGMENT (65535 - 20 - 20) /* TCP payload of one IPv4 packet */

static const struct usniff_events_api *api; /* usniff._events: Record, Packed */
#define RSLOT_(r, i) RSLOT(api->record_offsets, r, i)
static PyTypeObject *PackedType; /* api->packed_type: struct packed (_events.h) */
static PyObject *s_data, *empty_bytes;

/* --------------------------------------------------------------- direction */

/*
 * One direction of one flow, as C values: the framing here reads and advances
 * them without converting Python ints (seven per packet) or allocating a new
 * next_off per packet.  _Dir (outputs/pcapng.py) adds the fields only Python
 * uses.
 */
typedef struct {
	PyObject_HEAD
	unsigned long long seq0; /* seq = seq0 + stream offset (ISN + 1) */
	unsigned long long next_off; /* next stream offset expected (what the peer has ACKed) */
	unsigned long long l4_sum, ip_sum; /* constant parts of the header checksums */
	int fin, proto;
	char addrs[12]; /* source, destination address; source, destination port */
	PyObject *peer; /* Direction: the other direction of the flow */
	PyObject *note; /* str: extra comment for this direction's next packet */
	PyObject *comment_key; /* tuple (pid, tid, uid, comm, peer_pid, peer_comm, cgroup, peer_cgroup) or None */
	PyObject *comment_opts; /* bytes: the options of a packet with that comment */
} Direction;

static PyTypeObject DirectionType;

static int direction_traverse(PyObject *self, visitproc visit, void *arg)
{
	Direction *d = (Direction *)self;
	Py_VISIT(d->peer);
	Py_VISIT(d->note);
	Py_VISIT(d->comment_key);
	Py_VISIT(d->comment_opts);
	return 0;
}

static int direction_clear(PyObject *self)
{
	Direction *d = (Direction *)self;
	Py_CLEAR(d->peer);
	Py_CLEAR(d->note);
	Py_CLEAR(d->comment_key);
	Py_CLEAR(d->comment_opts);
	return 0;
}

static void direction_dealloc(PyObject *self)
{
	PyObject_GC_UnTrack(self);
	direction_clear(self);
	Py_TYPE(self)->tp_free(self);
}

/* The direction d (as its C struct), or NULL and TypeError. */
static Direction *as_direction(PyObject *d)
{
	if (!PyObject_TypeCheck(d, &DirectionType)) {
		PyErr_Format(PyExc_TypeError, "%R is not a Direction", Py_TYPE(d));
		return NULL;
	}
	return (Direction *)d;
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
	{"peer", T_OBJECT_EX, offsetof(Direction, peer), 0, "the flow's other direction"},
	{"note", T_OBJECT_EX, offsetof(Direction, note), 0, "extra comment for the next packet"},
	{"comment_key", T_OBJECT_EX, offsetof(Direction, comment_key), 0,
	 "(pid, tid, uid, comm, peer_pid, peer_comm, cgroup, peer_cgroup) of comment_opts, or None"},
	{"comment_opts", T_OBJECT_EX, offsetof(Direction, comment_opts), 0,
	 "EPB options with the comment of comment_key"},
	{NULL, 0, 0, 0, NULL},
};

static PyGetSetDef direction_getset[] = {
	{"addrs", direction_get_addrs, direction_set_addrs, "source, destination, ports", NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject DirectionType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = MODULE ".Direction",
	.tp_basicsize = sizeof(Direction),
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
	.tp_doc = PyDoc_STR("A flow direction's numbers and comment state, as C fields."),
	.tp_members = direction_members,
	.tp_getset = direction_getset,
	.tp_new = PyType_GenericNew,
	.tp_dealloc = direction_dealloc,
	.tp_traverse = direction_traverse,
	.tp_clear = direction_clear,
};

/* -------------------------------------------------------------------- sink */

/*
 * The output buffer of one batch, a bytearray: headers and small payloads are
 * appended in place; a payload of SPLICE_MIN bytes or more is kept by
 * reference in ``parts`` (what was appended before it becomes a bytes part)
 * and handed to writev(2) with the rest, so only the kernel copies its bytes.
 */
typedef struct {
	PyByteArrayObject base;
	PyObject *parts; /* list of bytes and buffers, written before the bytearray itself */
	Py_ssize_t parts_size; /* their total size */
} Sink;

static PyTypeObject SinkType;

static PyObject *sink_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
	if (PyTuple_GET_SIZE(args) || (kwds && PyDict_GET_SIZE(kwds))) {
		PyErr_SetString(PyExc_TypeError, "Sink() takes no arguments");
		return NULL;
	}
	PyObject *parts = PyList_New(0);
	Sink *s = parts == NULL ? NULL : (Sink *)PyByteArray_Type.tp_new(type, args, kwds);
	if (s == NULL) {
		Py_XDECREF(parts);
		return NULL;
	}
	s->parts = parts;
	s->parts_size = 0;
	return (PyObject *)s;
}

static void sink_dealloc(PyObject *self)
{
	Py_CLEAR(((Sink *)self)->parts);
	PyByteArray_Type.tp_dealloc(self);
}

/* Keep ``payload`` (a buffer of n bytes) by reference after what is in s. */
static int splice(Sink *s, PyObject *payload, Py_ssize_t n)
{
	Py_ssize_t held = PyByteArray_GET_SIZE(s);
	if (held) {
		PyObject *head = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(s), held);
		int rc = head == NULL ? -1 : PyList_Append(s->parts, head);
		Py_XDECREF(head);
		if (rc < 0 || PyByteArray_Resize((PyObject *)s, 0) < 0)
			return -1;
		s->parts_size += held;
	}
	if (PyList_Append(s->parts, payload) < 0)
		return -1;
	s->parts_size += n;
	return 0;
}

PyDoc_STRVAR(sink_splice_doc, "splice(payload)\n--\n\nKeep ``payload`` by reference.");

static PyObject *sink_splice(PyObject *self, PyObject *payload)
{
	Py_buffer view;
	if (PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE) < 0)
		return NULL;
	Py_ssize_t n = view.len;
	PyBuffer_Release(&view);
	if (splice((Sink *)self, payload, n) < 0)
		return NULL;
	Py_RETURN_NONE;
}

PyDoc_STRVAR(sink_size_doc, "size()\n--\n\nBytes held: the parts and the bytearray.");

static PyObject *sink_size(PyObject *self, PyObject *unused)
{
	(void)unused;
	return PyLong_FromSsize_t(((Sink *)self)->parts_size + PyByteArray_GET_SIZE(self));
}

PyDoc_STRVAR(sink_pieces_doc,
	     "pieces()\n--\n\nThe buffers to write, in order: the parts, then a view of\n"
	     "the bytearray when it is not empty.");

static PyObject *sink_pieces(PyObject *self, PyObject *unused)
{
	(void)unused;
	PyObject *out = PyList_GetSlice(((Sink *)self)->parts, 0, PY_SSIZE_T_MAX);
	if (out == NULL || !PyByteArray_GET_SIZE(self))
		return out;
	PyObject *view = PyMemoryView_FromObject(self);
	int rc = view == NULL ? -1 : PyList_Append(out, view);
	Py_XDECREF(view);
	if (rc < 0)
		Py_CLEAR(out);
	return out;
}

static PyMethodDef sink_methods[] = {
	{"splice", sink_splice, METH_O, sink_splice_doc},
	{"size", sink_size, METH_NOARGS, sink_size_doc},
	{"pieces", sink_pieces, METH_NOARGS, sink_pieces_doc},
	{NULL, NULL, 0, NULL},
};

static PyMemberDef sink_members[] = {
	{"parts", T_OBJECT, offsetof(Sink, parts), READONLY, "buffers kept by reference"},
	{"parts_size", T_PYSSIZET, offsetof(Sink, parts_size), READONLY, "their total size"},
	{NULL, 0, 0, 0, NULL},
};

static PyTypeObject SinkType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = MODULE ".Sink",
	.tp_basicsize = sizeof(Sink),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = PyDoc_STR("A batch's output buffer; large payloads kept by reference."),
	.tp_new = sink_new,
	.tp_dealloc = sink_dealloc,
	.tp_methods = sink_methods,
	.tp_members = sink_members,
};

static int check_sink(PyObject *buf)
{
	if (!Py_IS_TYPE(buf, &SinkType)) {
		PyErr_SetString(PyExc_TypeError, "buf must be a Sink");
		return -1;
	}
	return 0;
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
 * A packet's payload: ``len`` bytes at ``buf``, their csum_words, and
 * ``obj``, an object exporting exactly them (kept by reference when large).
 */
struct payload {
	PyObject *obj;
	const char *buf;
	Py_ssize_t len;
	uint64_t sum;
};

/*
 * Append one EPB: hdr (IPv4 + transport header, hlen bytes, already with both
 * checksums), payload, padding, the options ``opts`` (bytes, opt_endofopt not
 * included) and the trailer.  ``origlen`` is the IPv4 total length.
 */
static int epb(Sink *sink, double ts, const unsigned char *hdr, Py_ssize_t hlen,
	       const struct payload *payload, Py_ssize_t origlen, PyObject *opts)
{
	PyObject *buf = (PyObject *)sink;
	Py_ssize_t caplen = hlen + payload->len;
	Py_ssize_t pad = (4 - caplen % 4) % 4;
	Py_ssize_t olen = PyBytes_GET_SIZE(opts);
	Py_ssize_t total = 32 + caplen + pad + olen + 4;
	int by_ref = payload->len >= SPLICE_MIN;
	uint64_t usec = (uint64_t)(int64_t)(ts * 1000000.0); /* int(ts * 1_000_000) */
	Py_ssize_t head = 28 + hlen + (by_ref ? 0 : payload->len);
	Py_ssize_t tail = pad + olen + 8;
	unsigned char *p = grow(buf, by_ref ? head : head + tail);
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
	if (by_ref) {
		if (splice(sink, payload->obj, payload->len) < 0 || (p = grow(buf, tail)) == NULL)
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

/* One TCP segment's EPB: ``length`` stream bytes at offset ``off`` of d's stream. */
static int tcp_block(Sink *buf, Direction *d, double ts, long flags, uint64_t off,
		     const struct payload *payload, Py_ssize_t length, PyObject *opts,
		     PyObject *tcp_opts)
{
	Py_ssize_t olen = PyBytes_GET_SIZE(tcp_opts);
	if (olen > 40 || olen % 4) {
		PyErr_SetString(PyExc_ValueError, "tcp_opts: at most 40 bytes, a multiple of 4");
		return -1;
	}
	Direction *peer = NULL;
	if (flags & TCP_ACK) {
		if (d->peer == NULL) {
			PyErr_SetString(PyExc_AttributeError, "peer is not set");
			return -1;
		}
		if ((peer = as_direction(d->peer)) == NULL)
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
	uint64_t l4 = d->l4_sum + (uint64_t)tcp_len + seq + ack + word + payload->sum +
		      csum_words((const unsigned char *)PyBytes_AS_STRING(tcp_opts), olen);
	put_be32(hdr + 24, seq);
	put_be32(hdr + 28, ack);
	put_be16(hdr + 32, word);
	put_be16(hdr + 34, 0xFFFF); /* window */
	put_be16(hdr + 36, (unsigned)(0xFFFF - l4 % 0xFFFF));
	put_be16(hdr + 38, 0); /* urgent pointer */
	memcpy(hdr + 40, PyBytes_AS_STRING(tcp_opts), (size_t)olen);
	return epb(buf, ts, hdr, 40 + olen, payload, total, opts);
}

/* The payload of obj, summed when sum (a Packed keeps its sum); any other
 * buffer's view is released with PyBuffer_Release(view). */
static int get_payload(PyObject *obj, struct payload *pl, Py_buffer *view, int sum)
{
	view->obj = NULL;
	pl->obj = obj;
	pl->sum = 0;
	if (Py_IS_TYPE(obj, PackedType)) {
		struct packed *p = (struct packed *)obj;
		pl->buf = p->data;
		pl->len = Py_SIZE(obj);
		if (sum) {
			if (p->sum == PACKED_UNSUMMED)
				p->sum = csum_words((const unsigned char *)p->data, Py_SIZE(obj));
			pl->sum = p->sum;
		}
		return 0;
	}
	if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0)
		return -1;
	pl->buf = view->buf;
	pl->len = view->len;
	if (sum)
		pl->sum = csum_words(view->buf, view->len);
	return 0;
}

/*
 * The segments of a TCP data record: ``length`` stream bytes at ``off`` (the
 * payload ``data`` may be shorter: snap length), MAX_SEGMENT per packet, PSH
 * on the last one when ``push``; d's next offset moves past them.  Returns
 * the number of packets, or -1.
 */
static Py_ssize_t segments(Sink *buf, Direction *d, double ts, int push, uint64_t off,
			   PyObject *data, Py_ssize_t length, PyObject *opts)
{
	struct payload pl;
	Py_buffer view;
	Py_ssize_t packets = 0;
	if (get_payload(data, &pl, &view, length <= MAX_SEGMENT) < 0) /* else summed by parts */
		return -1;
	long last_flags = TCP_ACK | (push ? TCP_PSH : 0);
	if (length <= MAX_SEGMENT) {
		packets = tcp_block(buf, d, ts, last_flags, off, &pl, length, opts, empty_bytes)
				  ? -1
				  : 1;
	} else {
		/* each segment's part of the payload: a memoryview (kept by reference when
		 * large), summed on its own */
		PyObject *whole = PyMemoryView_FromObject(data);
		for (Py_ssize_t pos = 0; whole != NULL && pos < length; pos += MAX_SEGMENT) {
			Py_ssize_t seg = length - pos < MAX_SEGMENT ? length - pos : MAX_SEGMENT;
			Py_ssize_t a = pos < pl.len ? pos : pl.len;
			Py_ssize_t b = pos + seg < pl.len ? pos + seg : pl.len;
			struct payload part = {PySequence_GetSlice(whole, a, b), pl.buf + a, b - a,
					       csum_words((const unsigned char *)pl.buf + a, b - a)};
			long flags = pos + seg == length ? last_flags : TCP_ACK;
			int rc = part.obj == NULL ? -1
						  : tcp_block(buf, d, ts, flags, off + (uint64_t)pos,
							      &part, seg, opts, empty_bytes);
			Py_XDECREF(part.obj);
			if (rc < 0) {
				packets = -1;
				break;
			}
			packets++;
		}
		if (whole == NULL)
			packets = -1;
		Py_XDECREF(whole);
	}
	if (view.obj != NULL)
		PyBuffer_Release(&view);
	if (packets >= 0 && off + (uint64_t)length > d->next_off)
		d->next_off = off + (uint64_t)length;
	return packets;
}

static int check_bytes(PyObject *obj, const char *what)
{
	if (!PyBytes_Check(obj)) {
		PyErr_Format(PyExc_TypeError, "%s must be bytes", what);
		return -1;
	}
	return 0;
}

PyDoc_STRVAR(tcp_doc,
	     "tcp(buf, d, ts, flags, off, payload, length, opts, tcp_opts)\n--\n\n"
	     "Append one TCP segment's EPB to ``buf``.");

static PyObject *epb_tcp(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
	(void)mod;
	if (nargs != 9) {
		PyErr_SetString(PyExc_TypeError, "tcp() takes 9 arguments");
		return NULL;
	}
	PyObject *opts = args[7], *tcp_opts = args[8];
	Direction *d;
	if (check_sink(args[0]) < 0 || (d = as_direction(args[1])) == NULL ||
	    check_bytes(opts, "opts") < 0 || check_bytes(tcp_opts, "tcp_opts") < 0)
		return NULL;
	double ts = PyFloat_AsDouble(args[2]);
	long flags = PyLong_AsLong(args[3]);
	uint64_t off = PyLong_AsUnsignedLongLongMask(args[4]);
	Py_ssize_t length = PyLong_AsSsize_t(args[6]);
	if (PyErr_Occurred())
		return NULL;
	struct payload pl;
	Py_buffer view;
	if (get_payload(args[5], &pl, &view, 1) < 0)
		return NULL;
	int rc = tcp_block((Sink *)args[0], d, ts, flags, off, &pl, length, opts, tcp_opts);
	if (view.obj != NULL)
		PyBuffer_Release(&view);
	if (rc < 0)
		return NULL;
	Py_RETURN_NONE;
}

PyDoc_STRVAR(segments_doc,
	     "segments(buf, d, ts, push, off, data, length, opts)\n--\n\n"
	     "Append a TCP data record's segments to ``buf``; returns how many.");

static PyObject *epb_segments(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
	(void)mod;
	if (nargs != 8) {
		PyErr_SetString(PyExc_TypeError, "segments() takes 8 arguments");
		return NULL;
	}
	Direction *d;
	if (check_sink(args[0]) < 0 || (d = as_direction(args[1])) == NULL ||
	    check_bytes(args[7], "opts") < 0)
		return NULL;
	double ts = PyFloat_AsDouble(args[2]);
	int push = PyObject_IsTrue(args[3]);
	uint64_t off = PyLong_AsUnsignedLongLong(args[4]);
	Py_ssize_t length = PyLong_AsSsize_t(args[6]);
	if (PyErr_Occurred())
		return NULL;
	Py_ssize_t n = segments((Sink *)args[0], d, ts, push, off, args[5], length, args[7]);
	return n < 0 ? NULL : PyLong_FromSsize_t(n);
}

PyDoc_STRVAR(udp_doc, "udp(buf, d, ts, payload, length, opts)\n--\n\n"
		      "Append one UDP datagram's EPB to ``buf``.");

static PyObject *epb_udp(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
	(void)mod;
	if (nargs != 6) {
		PyErr_SetString(PyExc_TypeError, "udp() takes 6 arguments");
		return NULL;
	}
	PyObject *opts = args[5];
	Direction *d;
	if (check_sink(args[0]) < 0 || (d = as_direction(args[1])) == NULL ||
	    check_bytes(opts, "opts") < 0)
		return NULL;
	double ts = PyFloat_AsDouble(args[2]);
	Py_ssize_t length = PyLong_AsSsize_t(args[4]);
	if (PyErr_Occurred())
		return NULL;
	Py_ssize_t udp_len = 8 + length;
	Py_ssize_t total = 20 + udp_len;
	unsigned char hdr[28];
	ipv4_header(d, IPPROTO_UDP, total, hdr);
	struct payload pl;
	Py_buffer view;
	if (get_payload(args[3], &pl, &view, 1) < 0)
		return NULL;
	uint64_t l4 = d->l4_sum + 2 * (uint64_t)udp_len + pl.sum;
	put_be16(hdr + 24, (unsigned)udp_len);
	put_be16(hdr + 26, (unsigned)(0xFFFF - l4 % 0xFFFF));
	int rc = epb((Sink *)args[0], ts, hdr, 28, &pl, total, opts);
	if (view.obj != NULL)
		PyBuffer_Release(&view);
	if (rc < 0)
		return NULL;
	Py_RETURN_NONE;
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

#define COMMENT_KEY 8 /* Direction.comment_key: pid, tid, uid, comm, peer_pid, peer_comm,
			   cgroup, peer_cgroup */

/* The direction of socket ``sock_id`` if it may be framed here (borrowed), with
 * its comment key; NULL with no error if not. */
static Direction *fast_dir(PyObject *dirs, PyObject *sock_id)
{
	PyObject *obj = PyDict_GetItemWithError(dirs, sock_id);
	if (obj == NULL || !PyObject_TypeCheck(obj, &DirectionType))
		return NULL;
	Direction *d = (Direction *)obj;
	PyObject *note = d->note, *key = d->comment_key;
	if (d->proto != IPPROTO_TCP || d->peer == NULL || note == NULL ||
	    !PyUnicode_CheckExact(note) || PyUnicode_GET_LENGTH(note) != 0 || key == NULL ||
	    !PyTuple_CheckExact(key) || PyTuple_GET_SIZE(key) != COMMENT_KEY ||
	    d->comment_opts == NULL || !PyBytes_CheckExact(d->comment_opts))
		return NULL;
	return d;
}

/* The record's one segment of ``length`` stream bytes at ``off`` (payload: the
 * buffer ``data``), if one segment with no gap before it; *done = 1 then. */
static int fast_segment(Sink *buf, Direction *d, double ts, long long flags, long long off,
			long long length, PyObject *data, int *done)
{
	if (length < 0 || length > MAX_SEGMENT || off < 0 || (unsigned long long)off > d->next_off)
		return 0;
	if (segments(buf, d, ts, (flags & FLAG_MSG_END) != 0, (uint64_t)off, data,
		     (Py_ssize_t)length, d->comment_opts) < 0)
		return -1;
	*done = 1;
	return 0;
}

/*
 * The common record of a batch is framed without a Python call: data on a
 * known TCP direction, one segment (length <= MAX_SEGMENT), no gap before it
 * (offset <= next_off), no note pending, the same comment key (pid, tid, uid,
 * comm, peer_pid, peer_comm) as the direction's previous packet (so its
 * cached comment_opts); write_batch has checked that no rotation is due.
 * Framer._segments then adds nothing to segments() (a note, a new comment).
 * *done = 0: not that case, write_batch hands the record to ``add``.
 */
static int fast_record(PyObject *rec, PyObject *dirs, Sink *buf, double ts, int *done)
{
	int ok = 1;
	*done = 0;
	PyObject *kind = RSLOT_(rec, R_KIND), *id = RSLOT_(rec, R_SOCK_ID),
		 *data = RSLOT_(rec, R_DATA);
	if (kind == NULL || id == NULL || data == NULL)
		return 0;
	if (kind != s_data && !(PyUnicode_CheckExact(kind) && PyUnicode_Compare(kind, s_data) == 0))
		return 0;
	if (as_ll(RSLOT_(rec, R_PEER_ID), &ok) == 0 || !ok) /* unconnected: (sock_id, path) keys */
		return 0;
	Direction *d = fast_dir(dirs, id);
	if (d == NULL)
		return PyErr_Occurred() ? -1 : 0;
	long long length = as_ll(RSLOT_(rec, R_LENGTH), &ok), off = as_ll(RSLOT_(rec, R_OFFSET), &ok);
	long long flags = as_ll(RSLOT_(rec, R_FLAGS), &ok);
	if (!ok)
		return 0;
	static const int key_fields[COMMENT_KEY] = {R_PID,	R_TID,	    R_UID,    R_COMM,
						    R_PEER_PID, R_PEER_COMM, R_CGROUP, R_PEER_CGROUP};
	for (int i = 0; i < COMMENT_KEY; i++) {
		PyObject *v = RSLOT_(rec, key_fields[i]);
		if (v == NULL)
			return 0;
		int eq = PyObject_RichCompareBool(v, PyTuple_GET_ITEM(d->comment_key, i), Py_EQ);
		if (eq <= 0)
			return eq;
	}
	return fast_segment(buf, d, ts, flags, off, length, data, done);
}

/* fast_record for a Packed: its fields are C values already. */
static int fast_packed(struct packed *p, PyObject *dirs, Sink *buf, int *done)
{
	*done = 0;
	Direction *d = fast_dir(dirs, p->sock_id);
	if (d == NULL)
		return PyErr_Occurred() ? -1 : 0;
	const uint64_t ids[COMMENT_KEY] = {p->ev.pid,	   p->ev.tid, p->ev.uid,    0,
					   p->ev.peer_pid, 0,	      p->ev.cgroup, p->ev.peer_cgroup};
	for (int i = 0; i < COMMENT_KEY; i++) {
		PyObject *v = PyTuple_GET_ITEM(d->comment_key, i);
		if (i == 3 || i == 5) { /* comms: usually the very objects */
			int eq = PyObject_RichCompareBool(i == 3 ? p->comm : p->peer_comm, v, Py_EQ);
			if (eq <= 0)
				return eq;
		} else if (!PyLong_CheckExact(v) || PyLong_AsUnsignedLongLongMask(v) != ids[i]) {
			PyErr_Clear();
			return 0;
		}
	}
	return fast_segment(buf, d, p->ts, p->ev.flags, (long long)p->ev.offset, p->ev.len,
			    (PyObject *)p, done);
}

PyDoc_STRVAR(write_batch_doc,
	     "write_batch(dirs, add, buf, batch, start, room, deadline)\n--\n\n"
	     "Frame batch[start:] into ``buf``: common records here (fast_record in\n"
	     "_epb.c), the others through ``add(buf, record)``.  ``dirs``: the\n"
	     "framer's directions by sock_id.  Stops at the first record that needs\n"
	     "a rotation (``buf.size() > room`` or ``ts >= deadline``) or is not a\n"
	     "record; returns its index (len(batch) when all are done) and the\n"
	     "number of packets framed here (not counting ``add``'s).");

static PyObject *epb_write_batch(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
	(void)mod;
	if (nargs != 7) {
		PyErr_SetString(PyExc_TypeError, "write_batch() takes 7 arguments");
		return NULL;
	}
	PyObject *dirs = args[0], *add = args[1];
	if (!PyDict_Check(dirs)) {
		PyErr_SetString(PyExc_TypeError, "dirs must be a dict");
		return NULL;
	}
	if (check_sink(args[2]) < 0)
		return NULL;
	Sink *buf = (Sink *)args[2];
	Py_ssize_t i = PyLong_AsSsize_t(args[4]);
	double room = PyFloat_AsDouble(args[5]), deadline = PyFloat_AsDouble(args[6]);
	if (PyErr_Occurred())
		return NULL;
	PyObject *seq = PySequence_Fast(args[3], "batch must be a sequence");
	if (seq == NULL)
		return NULL;
	Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), packets = 0;
	int done, rc = 0;
	for (; i < n; i++) {
		PyObject *rec = PySequence_Fast_GET_ITEM(seq, i), *ts_obj;
		int packed = Py_IS_TYPE(rec, PackedType);
		double ts;
		if (packed) {
			ts = ((struct packed *)rec)->ts;
		} else {
			if (!Py_IS_TYPE(rec, api->record_type) ||
			    (ts_obj = RSLOT_(rec, R_TS)) == NULL)
				break;
			ts = PyFloat_AsDouble(ts_obj);
			if (ts == -1.0 && PyErr_Occurred()) {
				PyErr_Clear();
				break;
			}
		}
		if ((double)(buf->parts_size + PyByteArray_GET_SIZE(buf)) > room || ts >= deadline)
			break; /* rotation or write-out due: PcapngOutput.write */
		rc = packed ? fast_packed((struct packed *)rec, dirs, buf, &done)
			    : fast_record(rec, dirs, buf, ts, &done);
		if (rc < 0)
			break;
		if (done) {
			packets++;
			continue;
		}
		PyObject *full = packed ? api->packed_record(rec, NULL) : Py_NewRef(rec);
		PyObject *call[2] = {(PyObject *)buf, full}; /* the rest: add */
		PyObject *r = full == NULL ? NULL : PyObject_Vectorcall(add, call, 2, NULL);
		Py_XDECREF(full);
		if (r == NULL) {
			rc = -1;
			break;
		}
		Py_DECREF(r);
	}
	Py_DECREF(seq);
	if (rc < 0)
		return NULL;
	return Py_BuildValue("nn", i, packets);
}

/* ------------------------------------------------------------------ module */

static PyMethodDef module_methods[] = {
	{"tcp", (PyCFunction)(void (*)(void))epb_tcp, METH_FASTCALL, tcp_doc},
	{"udp", (PyCFunction)(void (*)(void))epb_udp, METH_FASTCALL, udp_doc},
	{"segments", (PyCFunction)(void (*)(void))epb_segments, METH_FASTCALL, segments_doc},
	{"write_batch", (PyCFunction)(void (*)(void))epb_write_batch, METH_FASTCALL,
	 write_batch_doc},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT,
	.m_name = MODULE,
	.m_doc = "The pcapng output's packet encoder in C (see _epb.c).",
	.m_size = -1,
	.m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__epb(void)
{
	if ((s_data = PyUnicode_InternFromString("data")) == NULL ||
	    (empty_bytes = PyBytes_FromStringAndSize(NULL, 0)) == NULL)
		return NULL;
	if ((api = events_api()) == NULL)
		return NULL;
	PackedType = api->packed_type;
	SinkType.tp_base = &PyByteArray_Type;
	if (PyType_Ready(&DirectionType) < 0 || PyType_Ready(&SinkType) < 0)
		return NULL;
	PyObject *m = PyModule_Create(&module);
	if (m == NULL)
		return NULL;
	if (PyModule_AddObjectRef(m, "Direction", (PyObject *)&DirectionType) < 0 ||
	    PyModule_AddObjectRef(m, "Sink", (PyObject *)&SinkType) < 0 ||
	    PyModule_AddIntConstant(m, "SPLICE_MIN", SPLICE_MIN) < 0 ||
	    PyModule_AddIntConstant(m, "MAX_SEGMENT", MAX_SEGMENT) < 0) {
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
