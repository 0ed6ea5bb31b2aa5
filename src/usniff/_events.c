/*
 * usniff._events: the C side of events.py (see _events.h), below both the
 * capture and the outputs stage.
 *
 *  - Records made without running the dataclass's __init__, their int and
 *    str fields from small caches (make_record);
 *  - Packed, the compact data record of a capture that only writes pcapng
 *    (struct packed; packed_new, Packed.record());
 *  - the slot offsets of Record and CaptureStats, checked at import.
 *
 * The capture's record assembler (capture/_records.c) and the pcapng encoder
 * (outputs/_epb.c) reach these through the capsule _C_API.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_events.h"

_Static_assert(sizeof(struct usniff_event) == 136, "capture.records.EVENT is 136 bytes");

#define MODULE "usniff._events"

static PyObject *Record; /* usniff.events.Record */
static Py_ssize_t record_offsets[RECORD_FIELDS];
#define RSLOT_(r, i) RSLOT(record_offsets, r, i)
static PyObject *CaptureStats; /* usniff.events.CaptureStats */
static const char *const stats_fields[STATS_FIELDS] = {"records", "bytes", "bytes_kept"};
static Py_ssize_t stats_offsets[STATS_FIELDS];
static PyObject *SOCK_TYPES; /* usniff.events.SOCK_TYPES */
static PyObject *empty_bytes, *s_data, *s_lost;

/* -------------------------------------------------------------- slot layout */

/* Offsets of the plain object slots ``names`` of ``type``; TypeError if one is not. */
static int member_offsets(PyObject *type, const char *const *names, int n,
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
static int slot_offsets(const char *module, PyObject *type, const char *const *names,
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
static PyObject *record_layout(const char *module, Py_ssize_t *offsets)
{
	PyObject *events = PyImport_ImportModule("usniff.events");
	PyObject *record = events == NULL ? NULL : PyObject_GetAttrString(events, "Record");
	Py_XDECREF(events);
	if (record != NULL &&
	    slot_offsets(module, record, record_fields, RECORD_FIELDS, 1, offsets) < 0)
		Py_CLEAR(record);
	return record;
}

/* ----------------------------------------------------------- field values */

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

/* ---------------------------------------------------------------- records */

/*
 * Records are built without running the dataclass's generated __init__ (which
 * only stores its arguments, ~0.3 us of the ~2 us per record): the 20 values
 * go straight into the slots (_events.h checks the layout at import).
 * Record(*args) steals the references in args (all non-NULL).
 */
static PyObject *new_record(PyObject **args)
{
	PyTypeObject *tp = (PyTypeObject *)Record;
	PyObject *r = tp->tp_alloc(tp, 0);
	if (r == NULL)
		return NULL;
	for (int i = 0; i < RECORD_FIELDS; i++) {
		RSLOT_(r, i) = args[i];
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
 * The Record of a ring record (Assembler.handle; Packed.record): body[0:n]
 * is its payload; a loss record has none and lost == length.
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
		id_int(ev->cgroup),
		id_int(ev->peer_cgroup),
	};
	for (int i = 0; i < RECORD_FIELDS; i++)
		if (args[i] == NULL) {
			for (int j = 0; j < RECORD_FIELDS; j++)
				Py_XDECREF(args[j]);
			return NULL;
		}
	return new_record(args);
}

/* ---------------------------------------------------------- packed records */

/*
 * The drain makes a Packed instead of a Record when the capture's every
 * output takes them (Assembler.packed: the CLI's -w without --stats, the
 * Wireshark extcap) and the record is the common kind: data from a connected
 * stream socket whose address is known.  They are ordered with the Records
 * (Capture._release reads .ts) and framed by outputs/_epb.c from their C
 * fields; .record() gives the equivalent Record for everything else (a new
 * flow, a changed comment, a gap, a close).  Why: allocating and freeing a
 * Record and its field objects was most of the collector's cost per record
 * under -w (docs/performance.md, "Collector").
 */
typedef struct packed Packed;
static PyTypeObject PackedType;

/*
 * Freed Packed records of up to RECYCLE_MAX bytes are kept for the next ones,
 * by size class, up to RECYCLE_KEEP bytes in all (the GIL guards the lists).
 * A capture frees as many as it makes, a reorder hold later; given back to
 * pymalloc, the emptied arenas were unmapped and fresh pages faulted in for
 * the next batch (docs/performance.md, section 5).
 */
#define RECYCLE_STEP 64
#define RECYCLE_MAX 2048
#define RECYCLE_KEEP (16 << 20)
static struct recycled {
	struct recycled *next;
} *recycled[RECYCLE_MAX / RECYCLE_STEP + 1];
static size_t recycled_bytes;

/* the size class of a Packed of n payload bytes (above RECYCLE_MAX: not kept) */
static size_t packed_class(Py_ssize_t n)
{
	return (offsetof(Packed, data) + (size_t)n + RECYCLE_STEP - 1) / RECYCLE_STEP;
}

static Packed *packed_alloc(Py_ssize_t n)
{
	size_t cls = packed_class(n);
	void *mem;
	if (cls * RECYCLE_STEP > RECYCLE_MAX) {
		mem = PyObject_Malloc(offsetof(Packed, data) + (size_t)n);
	} else if (recycled[cls] != NULL) {
		mem = recycled[cls];
		recycled[cls] = recycled[cls]->next;
		recycled_bytes -= cls * RECYCLE_STEP;
	} else {
		mem = PyObject_Malloc(cls * RECYCLE_STEP);
	}
	if (mem == NULL) {
		PyErr_NoMemory();
		return NULL;
	}
	return (Packed *)PyObject_InitVar((PyVarObject *)mem, &PackedType, n);
}

static Packed *packed_new(const struct usniff_event *ev, double ts, const char *body,
			  Py_ssize_t n, PyObject *path, PyObject *is_own, PyObject *sock_id, int sum)
{
	PyObject *comm = comm_name(ev->comm), *peer_comm = comm_name(ev->peer_comm);
	Packed *p = comm == NULL || peer_comm == NULL ? NULL : packed_alloc(n);
	if (p == NULL) {
		Py_XDECREF(comm);
		Py_XDECREF(peer_comm);
		return NULL;
	}
	p->ev = *ev;
	p->ts = ts;
	p->sock_id = Py_NewRef(sock_id);
	p->comm = comm;
	p->peer_comm = peer_comm;
	p->path = Py_NewRef(path);
	p->path_is_own = Py_NewRef(is_own);
	memcpy(p->data, body, (size_t)n);
	p->sum = sum ? csum_words((const unsigned char *)p->data, n) : PACKED_UNSUMMED;
	return p;
}

static void packed_dealloc(PyObject *self)
{
	Packed *p = (Packed *)self;
	Py_DECREF(p->sock_id);
	Py_DECREF(p->comm);
	Py_DECREF(p->peer_comm);
	Py_DECREF(p->path);
	Py_DECREF(p->path_is_own);
	size_t cls = packed_class(Py_SIZE(self)), size = cls * RECYCLE_STEP;
	if (size <= RECYCLE_MAX && recycled_bytes + size <= RECYCLE_KEEP) {
		struct recycled *r = (struct recycled *)self;
		r->next = recycled[cls];
		recycled[cls] = r;
		recycled_bytes += size;
		return;
	}
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
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = MODULE ".Packed",
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


/* ------------------------------------------------------------------ module */

static const struct usniff_events_api api = {
	.record_offsets = record_offsets,
	.stats_offsets = stats_offsets,
	.packed_type = &PackedType,
	.id_int = id_int,
	.make_record = make_record,
	.packed_new = packed_new,
	.packed_record = packed_record,
};
static struct usniff_events_api api_out;

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT,
	.m_name = MODULE,
	.m_doc = "Records and Packed records in C (see _events.c); the C API of the other two.",
	.m_size = -1,
};

PyMODINIT_FUNC PyInit__events(void)
{
	if ((s_data = PyUnicode_InternFromString("data")) == NULL ||
	    (s_lost = PyUnicode_InternFromString("lost")) == NULL ||
	    (empty_bytes = PyBytes_FromStringAndSize(NULL, 0)) == NULL)
		return NULL;
	if ((Record = record_layout(MODULE, record_offsets)) == NULL)
		return NULL;
	PyObject *events = PyImport_ImportModule("usniff.events");
	if (events == NULL)
		return NULL;
	CaptureStats = PyObject_GetAttrString(events, "CaptureStats");
	SOCK_TYPES = PyObject_GetAttrString(events, "SOCK_TYPES");
	Py_DECREF(events);
	if (CaptureStats == NULL || SOCK_TYPES == NULL)
		return NULL;
	if (slot_offsets(MODULE, CaptureStats, stats_fields, STATS_FIELDS, 0, stats_offsets) < 0)
		return NULL;
	if (!PyDict_Check(SOCK_TYPES)) {
		PyErr_SetString(PyExc_TypeError, "usniff.events.SOCK_TYPES must be a dict");
		return NULL;
	}
	if (PyType_Ready(&PackedType) < 0)
		return NULL;
	api_out = api;
	api_out.record_type = (PyTypeObject *)Record;
	api_out.stats_type = (PyTypeObject *)CaptureStats;
	PyObject *m = PyModule_Create(&module);
	if (m == NULL)
		return NULL;
	PyObject *capsule = PyCapsule_New(&api_out, USNIFF_EVENTS_API, NULL);
	int rc = capsule == NULL || PyModule_AddObjectRef(m, "_C_API", capsule) < 0 ||
		 PyModule_AddObjectRef(m, "Packed", (PyObject *)&PackedType) < 0;
	Py_XDECREF(capsule);
	if (rc) {
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
