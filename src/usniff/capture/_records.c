/*
 * usniff.capture._records: the capture stage's per-record hot path, in C.
 *
 *  - Assembler.handle(): one ring-buffer record (struct usniff_event from
 *    ebpf/usniff.h, which capture._EVENT mirrors) -> one events.Record (or a
 *    Packed) appended to the assembler's batch.  Everything it works on is
 *    given to its constructor: the CaptureStats it counts in, the dicts it
 *    reads and fills, and the Python callables for the rare cases (an address
 *    announcement, an unknown socket, a datagram destination, a loss).
 *  - drain(): the walk over a BPF ring buffer's memory mapping (ringbuf.py
 *    maps it): each committed record goes to Assembler.handle's C code
 *    directly, no Python call or memoryview per record; the consumer
 *    position is published every RELEASE bytes and at the end.
 *  Records and Packed records (the compact data record of a capture that
 *  only writes pcapng) are made by usniff._events (_events.c), through its C
 *  API (_events.h).
 *
 * Why C: in Python, the per-record cost (building a Record, walking the ring)
 * was what limited the collector, and on a shared machine the collector's CPU
 * is taken from the traced service (docs/performance.md, "Collector").
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_events.h"

_Static_assert(sizeof(struct usniff_event) == 136, "capture.records.EVENT is 136 bytes");
_Static_assert(sizeof(struct usniff_sock_state) == 96, "capture.records.SOCK_STATE is 96 bytes");

#define MODULE "usniff.capture._records"
enum { SOCK_STREAM = 1 };

static const struct usniff_events_api *api; /* usniff._events */
#define RSLOT_(r, i) RSLOT(api->record_offsets, r, i)
static const char *const stats_fields[STATS_FIELDS] = {"records", "bytes", "bytes_kept"};
static PyObject *s_release;

/* --------------------------------------------------------------- assembler */

typedef struct {
	PyObject_HEAD
	PyObject *stats; /* CaptureStats: records, bytes, bytes_kept counted here */
	PyObject *sock_info; /* dict sock_id -> (path, path_is_own), filled by announce/lookup */
	PyObject *last; /* dict sock_id -> the socket's newest record (for closes) */
	PyObject *dest, *in_dest; /* dicts: destination() is called while either is not empty */
	PyObject *batch; /* list: the records made, in ring order */
	PyObject *lookup, *destination, *count_loss, *announce; /* callables */
	double clock; /* wall clock - CLOCK_MONOTONIC, seconds */
	char packed; /* common data records become Packed */
	char sums; /* their payloads summed as they are copied (csum_words: pcapng will frame them) */
} Assembler;

static PyTypeObject AssemblerType;

#define ASSEMBLER_OBJECTS(a)                                                             \
	X(a->stats) X(a->sock_info) X(a->last) X(a->dest) X(a->in_dest) X(a->batch)     \
	X(a->lookup) X(a->destination) X(a->count_loss) X(a->announce)

static int assembler_traverse(PyObject *self, visitproc visit, void *arg)
{
	Assembler *a = (Assembler *)self;
#define X(f) Py_VISIT(f);
	ASSEMBLER_OBJECTS(a)
#undef X
	return 0;
}

static int assembler_clear(PyObject *self)
{
	Assembler *a = (Assembler *)self;
#define X(f) Py_CLEAR(f);
	ASSEMBLER_OBJECTS(a)
#undef X
	return 0;
}

static void assembler_dealloc(PyObject *self)
{
	PyObject_GC_UnTrack(self);
	assembler_clear(self);
	Py_TYPE(self)->tp_free(self);
}

static PyObject *assembler_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"stats",	"sock_info",  "last",	   "dest",  "in_dest",
				 "lookup",	"destination", "count_loss", "announce", "clock",
				 "packed",	"sums",	       NULL};
	PyObject *stats, *sock_info, *last, *dest, *in_dest, *lookup = NULL, *destination = NULL,
		*count_loss = NULL, *announce = NULL, *clock_obj = NULL;
	int packed = 0, sums = 0;
	if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!O!O!|$OOOOOpp:Assembler", kwlist,
					 api->stats_type, &stats, &PyDict_Type,
					 &sock_info, &PyDict_Type, &last, &PyDict_Type, &dest,
					 &PyDict_Type, &in_dest, &lookup, &destination, &count_loss,
					 &announce, &clock_obj, &packed, &sums))
		return NULL;
	PyObject *const required[5] = {lookup, destination, count_loss, announce, clock_obj};
	for (int i = 0; i < 5; i++)
		if (required[i] == NULL) {
			PyErr_Format(PyExc_TypeError, "Assembler: missing argument %s", kwlist[5 + i]);
			return NULL;
		} else if (i < 4 && !PyCallable_Check(required[i])) {
			PyErr_Format(PyExc_TypeError, "Assembler: %s must be callable", kwlist[5 + i]);
			return NULL;
		}
	double clock = PyFloat_AsDouble(clock_obj);
	if (clock == -1.0 && PyErr_Occurred())
		return NULL;
	if (!Py_IS_TYPE(stats, api->stats_type)) {
		PyErr_SetString(PyExc_TypeError, "Assembler: stats must be a CaptureStats");
		return NULL;
	}
	Assembler *a = (Assembler *)type->tp_alloc(type, 0);
	if (a == NULL)
		return NULL;
	if ((a->batch = PyList_New(0)) == NULL) {
		Py_DECREF(a);
		return NULL;
	}
	a->stats = Py_NewRef(stats);
	a->sock_info = Py_NewRef(sock_info);
	a->last = Py_NewRef(last);
	a->dest = Py_NewRef(dest);
	a->in_dest = Py_NewRef(in_dest);
	a->lookup = Py_NewRef(lookup);
	a->destination = Py_NewRef(destination);
	a->count_loss = Py_NewRef(count_loss);
	a->announce = Py_NewRef(announce);
	a->clock = clock;
	a->packed = (char)packed;
	a->sums = (char)sums;
	return (PyObject *)a;
}

/* f(*args), args with a free slot before them (PY_VECTORCALL_ARGUMENTS_OFFSET) */
static inline PyObject *call(PyObject *f, PyObject **args, size_t n)
{
	return PyObject_Vectorcall(f, args, n | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
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

/*
 * CaptureStats records, bytes and bytes_kept are summed in ``acc`` and added
 * to the Python object once per drain (straight in its slots): three int
 * additions per record cost as much as building the Record's fields.  ``rc``
 * < 0: a record failed and its error is set; what was handled before it is
 * still counted, and that first error is the one reported.  Returns rc, or -1
 * if the addition itself fails.
 */
static int stats_flush(Assembler *a, uint64_t *acc, int rc)
{
	PyObject *type = NULL, *value = NULL, *tb = NULL;
	int err = 0;
	if (acc[0] == 0)
		return rc;
	if (rc < 0)
		PyErr_Fetch(&type, &value, &tb);
	for (int i = 0; i < STATS_FIELDS && !err; i++) {
		PyObject **slot = (PyObject **)((char *)a->stats + api->stats_offsets[i]);
		PyObject *inc = *slot == NULL ? NULL : PyLong_FromUnsignedLongLong(acc[i]);
		PyObject *sum = inc == NULL ? NULL : PyNumber_Add(*slot, inc);
		Py_XDECREF(inc);
		if (sum == NULL) {
			if (!PyErr_Occurred())
				PyErr_Format(PyExc_AttributeError, "%s is not set", stats_fields[i]);
			err = 1;
		} else {
			Py_SETREF(*slot, sum);
		}
	}
	memset(acc, 0, STATS_FIELDS * sizeof(*acc));
	if (rc < 0) {
		if (err)
			PyErr_Clear();
		PyErr_Restore(type, value, tb);
	}
	return err ? -1 : rc;
}

static int handle_record(Assembler *a, const struct usniff_event *ev, const char *body,
			 Py_ssize_t body_len, uint64_t *acc)
{
	PyObject *id = NULL, *ino = NULL, *peer = NULL, *info = NULL, *path, *is_own,
		 *flags = NULL, *dest_info = NULL, *receiver = Py_None, *r = NULL;
	int rc = -1, lost = ev->kind == USNIFF_EV_LOST;
	Py_ssize_t n = (Py_ssize_t)ev->caplen < body_len ? (Py_ssize_t)ev->caplen : body_len;
	double ts = a->clock + (double)ev->ts_ns / 1e9;

	id = api->id_int(ev->sock_id);
	flags = PyLong_FromLong(ev->flags);
	if (id == NULL || flags == NULL)
		goto out;

	/* path, is_own = sock_info.get(id) or lookup(id, inode, peer_inode) */
	info = PyDict_GetItemWithError(a->sock_info, id);
	Py_XINCREF(info);
	if (info == NULL) {
		if (PyErr_Occurred() || (ino = api->id_int(ev->inode)) == NULL ||
		    (peer = api->id_int(ev->peer_inode)) == NULL)
			goto out;
		PyObject *args[4] = {NULL, id, ino, peer};
		if ((info = call(a->lookup, args + 1, 3)) == NULL)
			goto out;
	}
	PyObject *pi[2];
	if (unpack(info, 2, pi) < 0)
		goto out;
	path = pi[0];
	is_own = pi[1];

	if (a->packed && !lost && ev->peer_id && ev->sock_type == SOCK_STREAM &&
	    !PyDict_GET_SIZE(a->dest) && !PyDict_GET_SIZE(a->in_dest)) {
		if ((r = (PyObject *)api->packed_new(ev, ts, body, n, path, is_own, id, a->sums)) == NULL)
			goto out;
	} else {
		/* datagram destinations, only while one is known */
		if (PyDict_GET_SIZE(a->dest) || PyDict_GET_SIZE(a->in_dest)) {
			PyObject *args[5] = {NULL, id, path, is_own, flags};
			dest_info = call(a->destination, args + 1, 4);
			PyObject *di[4];
			if (dest_info == NULL || unpack(dest_info, 4, di) < 0)
				goto out;
			path = di[0];
			is_own = di[1];
			Py_SETREF(flags, Py_NewRef(di[2]));
			receiver = di[3];
		}
		if ((r = api->make_record(ev, ts, body, n, path, is_own, flags)) == NULL)
			goto out;
		/* the receiver an unconnected datagram was sent to: its inode, pid, comm */
		if (receiver != Py_None) {
			static const int fields[3] = {R_PEER_INODE, R_PEER_PID, R_PEER_COMM};
			PyObject *rv[3];
			if (unpack(receiver, 3, rv) < 0)
				goto out;
			for (int i = 0; i < 3; i++)
				Py_SETREF(RSLOT_(r, fields[i]), Py_NewRef(rv[i]));
		}
	}

	if (lost) {
		PyObject *length = PyLong_FromUnsignedLong(ev->len);
		PyObject *args[3] = {NULL, r, length};
		PyObject *res = length == NULL ? NULL : call(a->count_loss, args + 1, 2);
		Py_XDECREF(length);
		if (res == NULL)
			goto out;
		Py_DECREF(res);
	} else {
		acc[0] += 1;
		acc[1] += ev->len;
		acc[2] += ev->caplen;
	}
	/* read here, after the callbacks: one of them may have taken the batch */
	if (PyList_Append(a->batch, r) < 0)
		goto out;
	rc = PyDict_SetItem(a->last, id, r);
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

/* announce(rec): an EV_SOCK or EV_DEST record, as the Python object rec. */
static int announce(Assembler *a, PyObject *rec)
{
	PyObject *args[2] = {NULL, rec};
	PyObject *res = call(a->announce, args + 1, 1);
	Py_XDECREF(res);
	return res == NULL ? -1 : 0;
}

/*
 * One ring record (buf[0:len]) -> a record in the batch, or to announce.
 * ``obj`` is the record as a Python object for announce; NULL: a read-only
 * memoryview of buf is made for the call and released after it (the ring's
 * memory is reused once the consumer position moves past the record).
 */
static int handle_one(Assembler *a, const char *buf, Py_ssize_t len, PyObject *obj,
		      uint64_t *acc)
{
	struct usniff_event ev;
	if (len < (Py_ssize_t)sizeof ev) {
		PyErr_Format(PyExc_ValueError, "ring record of %zd bytes, shorter than its header",
			     len);
		return -1;
	}
	memcpy(&ev, buf, sizeof ev);
	if (ev.kind != USNIFF_EV_SOCK && ev.kind != USNIFF_EV_DEST)
		return handle_record(a, &ev, buf + sizeof ev, len - (Py_ssize_t)sizeof ev, acc);
	if (obj != NULL)
		return announce(a, obj);
	PyObject *view = PyMemoryView_FromMemory((char *)buf, len, PyBUF_READ);
	if (view == NULL)
		return -1;
	int rc = announce(a, view);
	PyObject *res = PyObject_CallMethodNoArgs(view, s_release);
	if (res == NULL) /* BufferError: announce kept a view of the ring */
		rc = -1;
	Py_XDECREF(res);
	Py_DECREF(view);
	return rc;
}

PyDoc_STRVAR(handle_doc,
	     "handle(rec)\n--\n\n"
	     "One ring record (a buffer valid only during the call) -> a record in\n"
	     "``batch``; EV_SOCK/EV_DEST records go to ``announce(rec)``.  drain()\n"
	     "runs the same C code for each record of a ring.");

static PyObject *assembler_handle(PyObject *self, PyObject *arg)
{
	Py_buffer view;
	if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
		return NULL;
	uint64_t acc[STATS_FIELDS] = {0};
	int rc = handle_one((Assembler *)self, view.buf, view.len, arg, acc);
	rc = stats_flush((Assembler *)self, acc, rc);
	PyBuffer_Release(&view);
	if (rc < 0)
		return NULL;
	Py_RETURN_NONE;
}

PyDoc_STRVAR(take_doc, "take()\n--\n\nThe batch so far; a new empty one replaces it.");

static PyObject *assembler_take(PyObject *self, PyObject *unused)
{
	(void)unused;
	Assembler *a = (Assembler *)self;
	PyObject *fresh = PyList_New(0);
	if (fresh == NULL)
		return NULL;
	PyObject *batch = a->batch;
	a->batch = fresh;
	return batch;
}

static PyMethodDef assembler_methods[] = {
	{"handle", assembler_handle, METH_O, handle_doc},
	{"take", assembler_take, METH_NOARGS, take_doc},
	{NULL, NULL, 0, NULL},
};

static PyMemberDef assembler_members[] = {
	{"clock", T_DOUBLE, offsetof(Assembler, clock), 0, "wall clock - CLOCK_MONOTONIC, s"},
	{"packed", T_BOOL, offsetof(Assembler, packed), 0, "common data records become Packed"},
	{"sums", T_BOOL, offsetof(Assembler, sums), 0, "Packed payloads summed as they are made"},
	{"batch", T_OBJECT, offsetof(Assembler, batch), READONLY, "the records made, not taken"},
	{"stats", T_OBJECT, offsetof(Assembler, stats), READONLY, "the CaptureStats counted in"},
	{NULL, 0, 0, 0, NULL},
};

static PyTypeObject AssemblerType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = MODULE ".Assembler",
	.tp_basicsize = sizeof(Assembler),
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
	.tp_doc = PyDoc_STR("Ring records -> events.Record (or Packed) batches; see _records.pyi."),
	.tp_new = assembler_new,
	.tp_dealloc = assembler_dealloc,
	.tp_traverse = assembler_traverse,
	.tp_clear = assembler_clear,
	.tp_methods = assembler_methods,
	.tp_members = assembler_members,
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
	     "drain(assembler, cons, prod, limit)\n--\n\n"
	     "Hand each committed record of a BPF ring buffer to ``assembler``\n"
	     "(its C code, no Python call per record).  ``cons``: the consumer page\n"
	     "(writable buffer); ``prod``: the producer page then the data area twice.\n"
	     "Stops at a record still being written, or after ``limit`` bytes; skips\n"
	     "discarded records.  Publishes the consumer position every RELEASE bytes\n"
	     "and at the end, also when a callback raises (up to the last record\n"
	     "handled).  Returns the number of bytes of ring consumed.");

static PyObject *rec_drain(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
	(void)mod;
	if (nargs != 4) {
		PyErr_SetString(PyExc_TypeError, "drain() takes 4 arguments");
		return NULL;
	}
	if (!Py_IS_TYPE(args[0], &AssemblerType)) {
		PyErr_SetString(PyExc_TypeError, "drain(): the first argument must be an Assembler");
		return NULL;
	}
	Assembler *a = (Assembler *)args[0];
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
	PyObject *result = NULL;
	uint64_t page = (uint64_t)cv.len, size = ((uint64_t)pv.len - page) / 2;
	if (page < 8 || page % 8 || (uint64_t)pv.len != page + 2 * size || size < 8 ||
	    (size & (size - 1)) || (uintptr_t)cv.buf % 8 || (uintptr_t)pv.buf % 8) {
		PyErr_SetString(PyExc_ValueError,
				"drain(): not a ring mapping (cons: one page; prod: one page, "
				"then twice a power-of-two data size)");
		goto out;
	}
	uint64_t *cons_pos = cv.buf;
	const uint64_t *prod_pos = pv.buf;
	const char *data = (const char *)pv.buf + page;
	uint64_t mask = size - 1;
	uint64_t start = __atomic_load_n(cons_pos, __ATOMIC_RELAXED); /* only we write it */
	uint64_t prod = __atomic_load_n(prod_pos, __ATOMIC_ACQUIRE);
	uint64_t cons = start, published = start, acc[STATS_FIELDS] = {0};
	uint64_t end = prod > cons && prod - cons > limit ? cons + limit : prod;
	int rc = 0;
	Py_INCREF(a); /* a callback may drop every other reference */
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
		    handle_one(a, data + off + RING_HDR, n, NULL, acc) < 0) {
			rc = -1;
			break;
		}
		cons += ((uint64_t)n + RING_HDR + 7) & ~(uint64_t)7;
		if (cons - published >= RING_RELEASE) {
			__atomic_store_n(cons_pos, cons, __ATOMIC_RELEASE);
			published = cons;
			if (PyErr_CheckSignals() < 0) {
				rc = -1;
				break;
			}
		}
	}
	if (cons != published)
		__atomic_store_n(cons_pos, cons, __ATOMIC_RELEASE);
	rc = stats_flush(a, acc, rc);
	Py_DECREF(a);
	if (rc == 0)
		result = PyLong_FromUnsignedLongLong(cons - start);
out:
	PyBuffer_Release(&pv);
	PyBuffer_Release(&cv);
	return result;
}

/* ------------------------------------------------------------ ordering */

struct stamped {
	double ts;
	PyObject *obj;
};

/* a record's ts: a Packed's from its C field, a Record's from its slot (no Python code runs) */
static int record_ts(PyObject *r, double *ts)
{
	if (Py_IS_TYPE(r, api->packed_type)) {
		*ts = ((struct packed *)r)->ts;
		return 0;
	}
	PyObject *v = Py_IS_TYPE(r, api->record_type) ? RSLOT(api->record_offsets, r, R_TS) : NULL;
	if (v == NULL || !PyFloat_CheckExact(v)) {
		PyErr_SetString(PyExc_TypeError, "sort_by_ts(): Records and Packed with a float ts");
		return -1;
	}
	*ts = PyFloat_AS_DOUBLE(v);
	return 0;
}

/* stable merge sort of a[0:n] by ts, through tmp (n items) */
static void merge_sort(struct stamped *a, struct stamped *tmp, Py_ssize_t n)
{
	if (n < 2)
		return;
	Py_ssize_t h = n / 2, i = 0, j = h, k = 0;
	merge_sort(a, tmp, h);
	merge_sort(a + h, tmp, n - h);
	if (a[h - 1].ts <= a[h].ts) /* already in order: the usual case */
		return;
	while (i < h && j < n)
		tmp[k++] = a[j].ts < a[i].ts ? a[j++] : a[i++];
	while (i < h)
		tmp[k++] = a[i++];
	memcpy(a, tmp, (size_t)k * sizeof *a); /* a[j:n] is in place already */
}

PyDoc_STRVAR(sort_by_ts_doc,
	     "sort_by_ts(records, start=0)\n--\n\n"
	     "Sort ``records[start:]`` (Records and Packed) in place by ts, stably: as\n"
	     "``records[start:] = sorted(records[start:], key=attrgetter(\"ts\"))``\n"
	     "without a float per record, nor a copy of the list.");

static PyObject *rec_sort_by_ts(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
	(void)mod;
	Py_ssize_t start = 0;
	if (nargs < 1 || nargs > 2 || !PyList_CheckExact(args[0])) {
		PyErr_SetString(PyExc_TypeError, "sort_by_ts(records: list, start: int = 0)");
		return NULL;
	}
	if (nargs == 2 && (start = PyLong_AsSsize_t(args[1])) < 0) {
		if (!PyErr_Occurred())
			PyErr_SetString(PyExc_ValueError, "sort_by_ts(): start < 0");
		return NULL;
	}
	PyObject *list = args[0];
	Py_ssize_t n = PyList_GET_SIZE(list) - start, sorted = 1;
	if (n < 2)
		Py_RETURN_NONE;
	struct stamped *a = PyMem_Malloc((size_t)(2 * n) * sizeof *a);
	if (a == NULL)
		return PyErr_NoMemory();
	for (Py_ssize_t i = 0; i < n; i++) {
		a[i].obj = PyList_GET_ITEM(list, start + i);
		if (record_ts(a[i].obj, &a[i].ts) < 0) {
			PyMem_Free(a);
			return NULL;
		}
		sorted &= i == 0 || a[i - 1].ts <= a[i].ts;
	}
	if (!sorted) {
		merge_sort(a, a + n, n);
		for (Py_ssize_t i = 0; i < n; i++) /* the same references, permuted */
			PyList_SET_ITEM(list, start + i, a[i].obj);
	}
	PyMem_Free(a);
	Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ module */

static PyMethodDef module_methods[] = {
	{"drain", (PyCFunction)(void (*)(void))rec_drain, METH_FASTCALL, drain_doc},
	{"sort_by_ts", (PyCFunction)(void (*)(void))rec_sort_by_ts, METH_FASTCALL, sort_by_ts_doc},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT,
	.m_name = MODULE,
	.m_doc = "The capture stage's record assembly and ring walk in C (see _records.c).",
	.m_size = -1,
	.m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__records(void)
{
	if ((s_release = PyUnicode_InternFromString("release")) == NULL ||
	    (api = events_api()) == NULL || PyType_Ready(&AssemblerType) < 0)
		return NULL;
	PyObject *m = PyModule_Create(&module);
	if (m == NULL)
		return NULL;
	if (PyModule_AddObjectRef(m, "Assembler", (PyObject *)&AssemblerType) < 0 ||
	    PyModule_AddIntConstant(m, "EVENT_SIZE", (long)sizeof(struct usniff_event)) < 0 ||
	    PyModule_AddIntConstant(m, "SOCK_STATE_SIZE", (long)sizeof(struct usniff_sock_state)) < 0 ||
	    PyModule_AddIntConstant(m, "CONFIG_SIZE", (long)sizeof(struct usniff_config)) < 0 ||
	    PyModule_AddIntConstant(m, "NAME_KEY_SIZE", (long)sizeof(struct usniff_name_key)) < 0 ||
	    PyModule_AddIntConstant(m, "RELEASE", RING_RELEASE) < 0) {
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
