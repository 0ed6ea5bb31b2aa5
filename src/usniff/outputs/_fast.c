/*
 * usniff.outputs._fast: the native path of the statistics table (--stats
 * without decoded lines), of --metrics alone and of text lines alone, driven
 * by outputs/fast.py; and --metrics' per-record socket counters (sockets(),
 * below).
 *
 * The Python engine (decoders/engine.py, streams.py, decoders/resp.py) costs
 * a few microseconds per transaction; a traced Redis answers one in ten.
 * Core takes over a RESP connection from the Python engine when the Python
 * side says it is plain (RespDecoder.plain(): in sync, no partial message,
 * FIFO pairing) and then, for each of its records that it can handle exactly,
 * does in C what the engine would have: in-order reassembly (the next offset
 * of each direction), RESP framing, the command name, FIFO pairing and the
 * per-command counts, bytes and latency histogram (the buckets below, which
 * outputs/histogram.py uses too, or the given edges of --metrics' histogram),
 * the latencies' sum and the candidates for the slowest list, per label (the
 * connection's socket path for --metrics, 0 for --stats).  Given the clock
 * (outputs.base.clock_text), the core writes each transaction's text line as
 * outputs/decoded.py format_text would instead (the section "text lines"
 * below), with the ends named by Python at adoption.  Python is touched once per run
 * of such records (Core.take, Core.lines), and for the clock once a second.
 *
 * A MySQL connection is taken over the same way (MysqlDecoder.plain(): in the
 * command phase, no packet half read, CLIENT_DEPRECATE_EOF known, only COM_QUERY
 * commands in flight whose reply has not begun; no lines).  Each connection has
 * its protocol and its record handler (resp_record, mysql_record), each row its
 * protocol.  mysql_record reads whole COM_QUERY packets and whole packets of
 * their replies (OK, ERR, one text resultset) as the decoder does, checking
 * whatever the decoder would reject; the row's key is the statement's shape,
 * asked of Python (the shape callable) once per distinct SQL text, its plain
 * numbers folded (fold_numbers), and kept here (struct shape, SHAPES texts).
 * PostgreSQL's simple queries likewise (pg_record: Query, then RowDescription,
 * DataRow, CommandComplete, EmptyQueryResponse, ErrorResponse up to
 * ReadyForQuery).
 *
 * A record it cannot handle exactly (out of order, a duplicate, a loss or
 * truncation, a close, a message split across records, a type it does not
 * frame, a reply without a request, a command whose pairing is not FIFO:
 * resp.STATEFUL; with lines, anything they would not show exactly, or that
 * would rename an end; of MySQL, any other command, USE, LOCAL INFILE, more
 * results, a progress report, an unexpected sequence id; of PostgreSQL, any
 * other message) ends the run: the connection is handed back (the state
 * fast.py gives the Python engine) before the record, and the Python engine
 * decodes it.  Records of connections Core does not own are the engine's.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "_events.h"

#define MODULE "usniff.outputs._fast"

static const struct usniff_events_api *API;
#define SLOT(r, i) RSLOT(API->record_offsets, r, i)
static PyObject *s_data, *s_close;

/* ---------------------------------------------------------- latency buckets */

/*
 * Log-linear buckets of a latency in nanoseconds, as in HdrHistogram: exact
 * below 2**SUB_BITS ns, then 2**(SUB_BITS - 1) buckets per power of two (a
 * bucket is at most 1/1024 of its value wide).  Negative latencies (two CPUs'
 * clocks a few ns apart) are mirrored, keeping the order.
 */
#define SUB_BITS 11

static int64_t bucket_of(int64_t ns)
{
	if (ns < 0)
		return ns == INT64_MIN ? INT64_MIN : -bucket_of(-ns) - 1;
	int shift = ns ? 64 - __builtin_clzll((uint64_t)ns) - SUB_BITS : 0;
	if (shift <= 0)
		return ns;
	return ((int64_t)shift << SUB_BITS) | (ns >> shift);
}

static double bucket_middle_of(int64_t key)
{
	if (key < 0)
		return -bucket_middle_of(-(key + 1));
	int shift = (int)(key >> SUB_BITS);
	if (shift == 0)
		return (double)key;
	int64_t low = (key & ((1 << SUB_BITS) - 1)) << shift;
	return (double)low + (double)((1ll << shift) - 1) / 2;
}

PyDoc_STRVAR(bucket_doc, "bucket(ns)\n--\n\nThe bucket of a latency of ns nanoseconds.");

static PyObject *py_bucket(PyObject *mod, PyObject *arg)
{
	(void)mod;
	long long ns = PyLong_AsLongLong(arg);
	if (ns == -1 && PyErr_Occurred())
		return NULL;
	return PyLong_FromLongLong(bucket_of(ns));
}

PyDoc_STRVAR(bucket_middle_doc,
	     "bucket_middle(key)\n--\n\nThe middle of bucket key, in nanoseconds.");

static PyObject *py_bucket_middle(PyObject *mod, PyObject *arg)
{
	(void)mod;
	long long key = PyLong_AsLongLong(arg);
	if (key == -1 && PyErr_Occurred())
		return NULL;
	return PyFloat_FromDouble(bucket_middle_of(key));
}

/* The latency of seconds as Histogram.add counts it: round(seconds * 1e9), ties to even. */
static int64_t nanoseconds(double seconds)
{
	double ns = nearbyint(seconds * 1e9);
	if (ns >= 9.2e18)
		return INT64_MAX;
	if (ns <= -9.2e18)
		return INT64_MIN + 1;
	return (int64_t)ns;
}

/* ------------------------------------------------------------- hash tables */

static uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	return x ^ (x >> 33);
}

static uint64_t hash_bytes(const unsigned char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return mix(h ^ n);
}

/*
 * bucket -> count, open addressing (INT64_MIN: empty, never a bucket of a latency we
 * count).  A row's buckets are runs of neighbouring integers, a run per power of two
 * of the latency (SUB_BITS above): slotted by the key itself, a run that wraps onto
 * another made a lookup probe through the whole other run (perf: half of count()
 * at redis -P 16).  A multiplicative hash spreads them.
 */
struct hist {
	int64_t *keys;
	uint64_t *counts;
	size_t cap, used;
	int bits; /* cap == 1 << bits */
};

static size_t hist_slot(int64_t key, int bits)
{
	return (size_t)(((uint64_t)key * 0x9E3779B97F4A7C15ull) >> (64 - bits));
}

static int hist_add(struct hist *h, int64_t key)
{
	if (2 * (h->used + 1) > h->cap) {
		int bits = h->cap ? h->bits + 1 : 6;
		size_t cap = (size_t)1 << bits;
		int64_t *keys = PyMem_Malloc(cap * sizeof *keys);
		uint64_t *counts = PyMem_Calloc(cap, sizeof *counts);
		if (keys == NULL || counts == NULL) {
			PyMem_Free(keys);
			PyMem_Free(counts);
			PyErr_NoMemory();
			return -1;
		}
		for (size_t i = 0; i < cap; i++)
			keys[i] = INT64_MIN;
		for (size_t i = 0; i < h->cap; i++) {
			if (h->keys[i] == INT64_MIN)
				continue;
			size_t j = hist_slot(h->keys[i], bits);
			while (keys[j] != INT64_MIN)
				j = (j + 1) & (cap - 1);
			keys[j] = h->keys[i];
			counts[j] = h->counts[i];
		}
		PyMem_Free(h->keys);
		PyMem_Free(h->counts);
		h->keys = keys;
		h->counts = counts;
		h->cap = cap;
		h->bits = bits;
	}
	size_t j = hist_slot(key, h->bits);
	while (h->keys[j] != INT64_MIN && h->keys[j] != key)
		j = (j + 1) & (h->cap - 1);
	if (h->keys[j] == INT64_MIN) {
		h->keys[j] = key;
		h->used++;
	}
	h->counts[j]++;
	return 0;
}

/*
 * The protocols Core decodes: a connection's, a row's.  OPAQUE: a connection the
 * engine decodes with no decoder (its records shown raw, which a table or metrics
 * alone do not show): Core only delivers its records, in order, and counts them in
 * the row (OPAQUE, label, "") of the connection's label.
 */
enum proto { RESP, MYSQL, POSTGRES, OPAQUE, NPROTOS };
static const char *const PROTOCOLS[NPROTOS] = {"resp", "mysql", "postgres", "opaque"};

/* A command (the --stats key) of a protocol and label: its counts since the last take. */
struct row {
	enum proto proto;
	uint64_t label;
	unsigned char *key; /* RESP: upper-cased name [+ " " + upper-cased subcommand]; SQL: shape */
	size_t keylen;
	uint64_t hash;
	PyObject *command; /* the key decoded as the decoder does (utf-8, errors replaced) */
	int stateful; /* RESP: a key of resp.STATEFUL: the connection goes back to Python */
	int container; /* RESP: a name of resp.CONTAINERS: the subcommand is part of the key */
	uint64_t count, errors, bytes_in, bytes_out;
	struct hist hist; /* latency bucket (log-linear, or index among Core's edges) -> count */
	int64_t nanoseconds; /* sum of the latencies, each rounded as Histogram.add does */
	double max;
	int has_max;
};

/*
 * Where the reply of an SQL connection's oldest request stands: MysqlDecoder's
 * _Command (state, left, eof_pending, seq, reply_bytes, ts_reply, error, ncols,
 * rows), PostgresDecoder's _Txn (reply_bytes, ts_reply, error, rows, row_bytes).
 */
enum reply { FIRST, COLUMNS, ROWS, DONE };
static const char *const REPLIES[] = {"first", "columns", "rows"}; /* mysql.Reply's values */

struct sql_reply {
	enum reply state;
	int eof_pending, seq, error, has_reply;
	int64_t left, ncols, rows, row_bytes, reply_bytes;
	double ts_reply;
};

/* A request waiting for its reply. */
struct pend {
	PyObject *obj; /* bytes: the request as sent; or the decoder's own request (adopted) */
	PyObject *text; /* lines: an adopted request's text (bytes, utf-8, printable); else NULL */
	/* the request as sent is raw[0:nbytes], inside owner (its record's payload) until
	 * the bytes obj is asked for (the slowest list, a hand-back), then inside obj;
	 * raw NULL: an adopted request (obj the decoder's) */
	PyObject *owner;
	const unsigned char *raw;
	struct row *row;
	double ts;
	int64_t nbytes;
};

struct conn {
	enum proto proto;
	uint64_t lo, hi, server, label;
	int64_t next[2];
	int started[2];
	double last_ts;
	PyObject *pid[2], *comm[2], *inode[2];
	uint64_t cgroup[2];
	PyObject *names; /* lines: " client -> server  " (bytes, utf-8, printable) */
	struct pend *q;
	size_t head, len, cap; /* q's ring: cap a power of two */
	/* MySQL: CLIENT_DEPRECATE_EOF, MARIADB_CLIENT_CACHE_METADATA, the next sequence
	 * id of the last command done (-1: none); SQL: the reply of the oldest request in
	 * q, and (PostgreSQL) the body of its last ErrorResponse */
	int deprecate_eof, cache_metadata, done_seq;
	struct sql_reply reply;
	PyObject *error;
	struct row *opaque; /* OPAQUE: the row its records are counted in */
};

/* An SQL text's --stats key, as the Python decoder computes it (SHAPES of them kept). */
struct shape {
	enum proto proto;
	uint64_t hash;
	unsigned char *sql, *key; /* key NULL: the decoder must see the statement (USE) */
	size_t sqllen, keylen;
};

typedef struct {
	PyObject_HEAD
	struct conn **conns; /* open addressing on (lo, hi); NULL: empty */
	size_t ccap, cused;
	struct row **rows; /* open addressing on the key */
	struct row *last_row; /* the row row_get found last (rows live as long as the core) */
	size_t rcap, rused;
	PyObject *containers, *stateful; /* frozensets of bytes (resp.py) */
	PyObject *shape; /* shape(protocol, sql): an SQL text's --stats key (NULL: no SQL) */
	struct shape **shapes; /* its answers, open addressing on (protocol, text) */
	size_t scap, sused, sbytes;
	double *edges; /* the histogram's upper bounds, ascending (NULL: log-linear buckets) */
	Py_ssize_t nedges;
	struct row **touched; /* the rows counted since the last take, in order of first count */
	size_t ntouched, ctouched;
	double *heap; /* latencies of the slowest list as it would stand without Python's */
	Py_ssize_t top, nheap;
	PyObject *slow; /* list of (latency, comm, request) candidates since the last take */
	uint64_t transactions, records;
	/* lines: the clock_text function (NULL: no lines), the lines since the last take */
	PyObject *clock;
	char *out;
	size_t olen, ocap;
	double second; /* the whole second whose HH:MM:SS is in hms (clock_text's cache) */
	char hms[8];
	int has_second;
} Core;

static void pend_clear(struct pend *p)
{
	Py_CLEAR(p->obj);
	Py_CLEAR(p->text);
	Py_CLEAR(p->owner);
}

/* p's request object: the bytes as sent made from raw on first use (NULL: error) */
static PyObject *pend_obj(struct pend *p)
{
	if (p->obj == NULL) {
		p->obj = PyBytes_FromStringAndSize((const char *)p->raw, p->nbytes);
		if (p->obj == NULL)
			return NULL;
		p->raw = (const unsigned char *)PyBytes_AS_STRING(p->obj);
		Py_CLEAR(p->owner);
	}
	return p->obj;
}

static void conn_free(struct conn *c)
{
	for (size_t i = 0; i < c->len; i++)
		pend_clear(&c->q[(c->head + i) & (c->cap - 1)]);
	for (int d = 0; d < 2; d++) {
		Py_XDECREF(c->pid[d]);
		Py_XDECREF(c->comm[d]);
		Py_XDECREF(c->inode[d]);
	}
	Py_XDECREF(c->names);
	Py_XDECREF(c->error);
	PyMem_Free(c->q);
	PyMem_Free(c);
}

static size_t conn_slot(Core *self, uint64_t lo, uint64_t hi)
{
	size_t j = mix(lo * 0x9E3779B97F4A7C15ull ^ hi) & (self->ccap - 1);
	while (self->conns[j] != NULL && (self->conns[j]->lo != lo || self->conns[j]->hi != hi))
		j = (j + 1) & (self->ccap - 1);
	return j;
}

static struct conn *conn_get(Core *self, uint64_t lo, uint64_t hi)
{
	return self->cused ? self->conns[conn_slot(self, lo, hi)] : NULL;
}

static int conn_put(Core *self, struct conn *c)
{
	if (2 * (self->cused + 1) > self->ccap) {
		size_t cap = self->ccap ? 2 * self->ccap : 64;
		struct conn **conns = PyMem_Calloc(cap, sizeof *conns);
		if (conns == NULL) {
			PyErr_NoMemory();
			return -1;
		}
		struct conn **old = self->conns;
		size_t oldcap = self->ccap;
		self->conns = conns;
		self->ccap = cap;
		for (size_t i = 0; i < oldcap; i++)
			if (old[i] != NULL)
				conns[conn_slot(self, old[i]->lo, old[i]->hi)] = old[i];
		PyMem_Free(old);
	}
	self->conns[conn_slot(self, c->lo, c->hi)] = c;
	self->cused++;
	return 0;
}

/* Forget c (linear probing: the entries after it move back into the hole). */
static void conn_del(Core *self, struct conn *c)
{
	size_t mask = self->ccap - 1, i = conn_slot(self, c->lo, c->hi), j = i;
	self->conns[i] = NULL;
	self->cused--;
	for (;;) {
		j = (j + 1) & mask;
		struct conn *e = self->conns[j];
		if (e == NULL)
			return;
		size_t home = mix(e->lo * 0x9E3779B97F4A7C15ull ^ e->hi) & mask;
		if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
			self->conns[i] = e;
			self->conns[j] = NULL;
			i = j;
		}
	}
}

static uint64_t row_hash(enum proto proto, uint64_t label, const unsigned char *key, size_t n)
{
	return hash_bytes(key, n) ^ mix(label + 1) ^ mix(~(uint64_t)proto);
}

/* a == b for n bytes: inline for a command name, not a libc call per command */
static int same_bytes(const unsigned char *a, const unsigned char *b, size_t n)
{
	if (n > 16)
		return memcmp(a, b, n) == 0;
	unsigned char d = 0;
	for (size_t i = 0; i < n; i++)
		d |= a[i] ^ b[i];
	return d == 0;
}

/*
 * The row of key[0:n] of label, made on first use (NULL and an exception on failure).
 * Its flags are of the key as a whole: a name alone when looked up by name
 * (the only lookup that reads ``container``); the stateful names are no
 * containers, so a key with a subcommand is stateful only as a whole (CLIENT REPLY).
 */
static struct row *row_get(Core *self, enum proto proto, uint64_t label,
			   const unsigned char *key, size_t n)
{
	struct row *last = self->last_row; /* a pipeline repeats its command: no hash then */
	if (last != NULL && last->label == label && last->proto == proto && last->keylen == n &&
	    same_bytes(last->key, key, n))
		return last;
	uint64_t h = row_hash(proto, label, key, n);
	size_t mask = self->rcap - 1, j = self->rcap ? h & mask : 0;
	if (self->rcap)
		for (; self->rows[j] != NULL; j = (j + 1) & mask) {
			struct row *r = self->rows[j];
			if (r->hash == h && r->label == label && r->proto == proto && r->keylen == n &&
			    same_bytes(r->key, key, n))
				return self->last_row = r;
		}
	struct row *r = PyMem_Calloc(1, sizeof *r);
	unsigned char *k = PyMem_Malloc(n ? n : 1);
	if (r == NULL || k == NULL) {
		PyMem_Free(r);
		PyMem_Free(k);
		PyErr_NoMemory();
		return NULL;
	}
	memcpy(k, key, n);
	r->proto = proto;
	r->label = label;
	r->key = k;
	r->keylen = n;
	r->hash = h;
	PyObject *whole = NULL;
	r->command = PyUnicode_DecodeUTF8((const char *)key, (Py_ssize_t)n, "replace");
	int st = 0, ct = 0;
	if (proto == RESP) {
		whole = PyBytes_FromStringAndSize((const char *)key, (Py_ssize_t)n);
		st = whole == NULL ? -1 : PySet_Contains(self->stateful, whole);
		ct = st < 0 ? -1 : PySet_Contains(self->containers, whole);
		Py_XDECREF(whole);
	}
	if (r->command == NULL || ct < 0) {
		Py_XDECREF(r->command);
		PyMem_Free(k);
		PyMem_Free(r);
		return NULL;
	}
	r->stateful = st;
	r->container = ct;
	if (2 * (self->rused + 1) > self->rcap) {
		size_t cap = self->rcap ? 2 * self->rcap : 64;
		struct row **rows = PyMem_Calloc(cap, sizeof *rows);
		if (rows == NULL) {
			Py_DECREF(r->command);
			PyMem_Free(k);
			PyMem_Free(r);
			PyErr_NoMemory();
			return NULL;
		}
		for (size_t i = 0; i < self->rcap; i++) {
			struct row *e = self->rows[i];
			if (e == NULL)
				continue;
			size_t p = e->hash & (cap - 1);
			while (rows[p] != NULL)
				p = (p + 1) & (cap - 1);
			rows[p] = e;
		}
		PyMem_Free(self->rows);
		self->rows = rows;
		self->rcap = cap;
		mask = cap - 1;
		for (j = h & mask; rows[j] != NULL; j = (j + 1) & mask)
			;
	}
	self->rows[j] = r;
	self->rused++;
	return self->last_row = r;
}

/* ------------------------------------------------------------ RESP framing */

#define KEEP 256 /* bytes of a bulk string the decoder keeps: of a name, all it upper-cases */
#define MAX_DEPTH 8 /* deeper replies go to the Python decoder */
#define MAX_ITEMS 16 /* elements of an array the decoder keeps (and shows) */
#define SUMMARY 160 /* characters of a request's or a reply's text (resp.SUMMARY) */

/* printable ASCII, space included: what the lines show as it is */
static int plain_text(const unsigned char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] < 0x20 || s[i] > 0x7e)
			return 0;
	return 1;
}

/*
 * A decimal number of at most 18 digits ending at a CRLF, from p (neg: a
 * leading '-' allowed).  Stricter than Python's int() (no '+', spaces or
 * '_'), so that whatever is read here is read alike by the decoder.  Returns
 * the position after the CRLF, or NULL when not so (or not all in [p, end)).
 */
static const unsigned char *number(const unsigned char *p, const unsigned char *end, int neg,
				   int64_t *out)
{
	int sign = 1, digits = 0;
	int64_t v = 0;
	if (neg && p < end && *p == '-') {
		sign = -1;
		p++;
	}
	for (; p < end && *p >= '0' && *p <= '9'; p++) {
		if (++digits > 18)
			return NULL;
		v = v * 10 + (*p - '0');
	}
	if (!digits || end - p < 2 || p[0] != '\r' || p[1] != '\n')
		return NULL;
	*out = sign * v;
	return p + 2;
}

/* A bulk string ``$N\r\n...\r\n`` at p: the position after it, its payload in *s, *n. */
static const unsigned char *bulk(const unsigned char *p, const unsigned char *end,
				 const unsigned char **s, int64_t *n)
{
	if (p >= end || *p != '$' || (p = number(p + 1, end, 0, n)) == NULL)
		return NULL;
	if (end - p < *n + 2 || p[*n] != '\r' || p[*n + 1] != '\n')
		return NULL;
	*s = p;
	return p + *n + 2;
}

/*
 * A reply the Python decoder reads alike and pairs FIFO: + - : $ and * of them.
 * With lines, only those the lines render exactly (line_reply): no array in an
 * array but a null one, no simple string or error but of printable ASCII.
 */
static const unsigned char *reply(int lines, const unsigned char *p, const unsigned char *end,
				  int depth)
{
	int64_t n;
	const unsigned char *s;
	if (p >= end)
		return NULL;
	switch (*p) {
	case '+':
	case '-':
		s = memchr(p, '\r', (size_t)(end - p));
		while (s != NULL && s + 1 < end && s[1] != '\n')
			s = memchr(s + 1, '\r', (size_t)(end - s - 1));
		if (s == NULL || s + 1 >= end)
			return NULL;
		return lines && !plain_text(p + 1, (size_t)(s - p - 1)) ? NULL : s + 2;
	case ':':
		return number(p + 1, end, 1, &n);
	case '$':
		if (end - p >= 5 && memcmp(p, "$-1\r\n", 5) == 0)
			return p + 5;
		return bulk(p, end, &s, &n);
	case '*':
		if (end - p >= 5 && memcmp(p, "*-1\r\n", 5) == 0)
			return p + 5;
		if (depth >= (lines ? 1 : MAX_DEPTH) || (p = number(p + 1, end, 0, &n)) == NULL)
			return NULL;
		for (int64_t i = 0; i < n && p != NULL; i++)
			p = reply(lines, p, end, depth + 1);
		return p;
	}
	return NULL;
}

/* upper-case n bytes (ASCII, as bytes.upper()) into out */
static void upper(unsigned char *out, const unsigned char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		out[i] = s[i] >= 'a' && s[i] <= 'z' ? s[i] - 32 : s[i];
}

/*
 * A command (an array of bulk strings, as RespDecoder reads it in one piece)
 * at p: the position after it, its row in *row.  NULL when it is anything
 * else, or a command of resp.STATEFUL (*row NULL then unless an error).
 */
static const unsigned char *command(Core *self, uint64_t label, const unsigned char *p,
				    const unsigned char *end, struct row **row)
{
	int64_t n, size[2] = {0, 0};
	const unsigned char *s, *arg[2] = {NULL, NULL};
	*row = NULL;
	if (p >= end || *p != '*' || (p = number(p + 1, end, 0, &n)) == NULL || n < 1)
		return NULL;
	for (int64_t i = 0; i < n; i++) {
		int64_t len;
		if ((p = bulk(p, end, &s, &len)) == NULL)
			return NULL;
		if (i < 2) {
			arg[i] = s;
			size[i] = len < KEEP ? len : KEEP;
		}
	}
	if (self->clock != NULL && !plain_text(arg[0], (size_t)size[0]))
		return NULL; /* a name the lines would show escaped */
	unsigned char key[2 * KEEP + 1];
	size_t k = (size_t)size[0];
	upper(key, arg[0], k);
	struct row *r = row_get(self, RESP, label, key, k);
	if (r != NULL && r->container && n > 1) {
		key[k] = ' ';
		upper(key + k + 1, arg[1], (size_t)size[1]);
		r = row_get(self, RESP, label, key, k + 1 + (size_t)size[1]);
	}
	if (r == NULL || r->stateful)
		return NULL;
	*row = r;
	return p;
}

/* ------------------------------------------------------------ text lines */

/*
 * The text of a request or a reply as resp.py renders it, clipped to SUMMARY
 * characters as base.clip does (all of it ASCII: one character a byte).
 * Only the first SUMMARY + 1 characters are kept: enough to know the clip.
 */
struct text {
	size_t n;
	char b[SUMMARY + 1];
};

static void add(struct text *t, const char *s, size_t n)
{
	size_t room = sizeof t->b - t->n;
	n = n < room ? n : room;
	memcpy(t->b + t->n, s, n);
	t->n += n;
}

static void addf(struct text *t, const char *fmt, long long v)
{
	char tmp[48];
	int n = snprintf(tmp, sizeof tmp, fmt, v);
	add(t, tmp, (size_t)n);
}

static void clip(struct text *t)
{
	if (t->n > SUMMARY) {
		memcpy(t->b + SUMMARY - 3, "...", 3);
		t->n = SUMMARY;
	}
}

/* base.show_bytes(s[:size], limit): bare when printable without spaces, else quoted */
static void show_bytes(struct text *t, const unsigned char *s, int64_t size, int64_t limit)
{
	int64_t n = size < limit ? size : limit, i = 0;
	for (; i < n; i++)
		if (s[i] <= 0x20 || s[i] > 0x7e || s[i] == '"' || s[i] == '\\')
			break;
	if (n && i == n && size == n) {
		add(t, (const char *)s, (size_t)n);
		return;
	}
	add(t, "\"", 1);
	add(t, (const char *)s, (size_t)i);
	for (; i < n && t->n < sizeof t->b; i++) {
		unsigned char b = s[i];
		char esc[5] = {'\\', 0, 0, 0, 0};
		size_t len = 2;
		switch (b) {
		case '"':
		case '\\':
			esc[1] = (char)b;
			break;
		case '\n':
			esc[1] = 'n';
			break;
		case '\r':
			esc[1] = 'r';
			break;
		case '\t':
			esc[1] = 't';
			break;
		default:
			if (b >= 0x20 && b <= 0x7e) {
				esc[0] = (char)b;
				len = 1;
			} else {
				esc[1] = 'x';
				esc[2] = "0123456789abcdef"[b >> 4];
				esc[3] = "0123456789abcdef"[b & 15];
				len = 4;
			}
		}
		add(t, esc, len);
	}
	add(t, "\"", 1);
	if (size > n)
		addf(t, "...(%lld bytes)", (long long)size);
}

/* RespDecoder._request_text of a command framed by command() (unredacted) */
static void line_request(struct text *t, const unsigned char *p, const unsigned char *end)
{
	int64_t n = 0, len = 0; /* framed before: every read succeeds */
	const unsigned char *s = NULL;
	p = number(p + 1, end, 0, &n);
	for (int64_t i = 0; i < n && i < MAX_ITEMS; i++) {
		p = bulk(p, end, &s, &len);
		if (i) {
			add(t, " ", 1);
			show_bytes(t, s, len, 48);
			continue;
		}
		for (int64_t j = 0; j < len && j < KEEP; j++) {
			char c = (char)(s[j] >= 'a' && s[j] <= 'z' ? s[j] - 32 : s[j]);
			add(t, &c, 1);
		}
	}
	if (n > MAX_ITEMS)
		addf(t, " ...+%lld args", (long long)(n - MAX_ITEMS));
	clip(t);
}

/* resp._render of a reply framed by reply() with lines; the position after it */
static const unsigned char *line_reply(struct text *t, const unsigned char *p,
				       const unsigned char *end, int depth)
{
	int64_t n = 0; /* framed before: every read succeeds */
	const unsigned char *s = NULL;
	switch (*p) {
	case '+':
	case '-':
		s = memchr(p, '\r', (size_t)(end - p));
		add(t, (const char *)p, (size_t)(s - p));
		return s + 2;
	case ':':
		p = number(p + 1, end, 1, &n);
		addf(t, ":%lld", (long long)n);
		return p;
	case '$':
		if (memcmp(p, "$-1\r\n", 5) == 0) {
			add(t, "(nil)", 5);
			return p + 5;
		}
		p = bulk(p, end, &s, &n);
		show_bytes(t, s, n, 64);
		return p;
	}
	if (memcmp(p, "*-1\r\n", 5) == 0) {
		add(t, "(nil)", 5);
		return p + 5;
	}
	p = number(p + 1, end, 0, &n);
	addf(t, "*%lld [", (long long)n);
	for (int64_t i = 0; i < n; i++) {
		if (i >= MAX_ITEMS) {
			p = reply(1, p, end, depth + 1);
			continue;
		}
		if (i)
			add(t, ", ", 2);
		p = line_reply(t, p, end, depth + 1);
	}
	if (n > MAX_ITEMS)
		addf(t, ", ...+%lld", (long long)(n - MAX_ITEMS));
	add(t, "]", 1);
	return p;
}

/* Room for n more bytes of lines (NULL and an exception when there is none). */
static char *room(Core *self, size_t n)
{
	if (self->olen + n > self->ocap) {
		size_t cap = self->ocap ? self->ocap : 65536;
		while (cap < self->olen + n)
			cap *= 2;
		char *out = PyMem_Realloc(self->out, cap);
		if (out == NULL) {
			PyErr_NoMemory();
			return NULL;
		}
		self->out = out;
		self->ocap = cap;
	}
	return self->out + self->olen;
}

/* v (< 10^width) as width decimal digits, zero-padded */
static void put_digits(char *o, uint64_t v, int width)
{
	while (width--) {
		o[width] = (char)('0' + v % 10);
		v /= 10;
	}
}

/*
 * "  %.3f ms\n" of ms into buf (>= 40 bytes); its length.  printf's %f costs
 * ~10 % of text mode's CPU: a latency is rounded to whole microseconds here,
 * as printf would (to nearest, ties to even), and printf is left only what
 * this cannot settle (within 1e-6 us of a tie, negative, or 1,000 s and more).
 */
static int latency_text(char *buf, double ms)
{
	double us = ms * 1000.0, whole = nearbyint(us);
	if (!(us >= 0 && us < 1e9 && fabs(fabs(us - whole) - 0.5) > 1e-6))
		return snprintf(buf, 40, "  %.3f ms\n", ms);
	uint64_t n = (uint64_t)whole, head = n / 1000;
	int digits = 1;
	for (uint64_t d = head; d >= 10; d /= 10)
		digits++;
	memcpy(buf, "  ", 2);
	put_digits(buf + 2, head, digits);
	buf[2 + digits] = '.';
	put_digits(buf + 3 + digits, n % 1000, 3);
	memcpy(buf + 6 + digits, " ms\n", 4);
	return 10 + digits;
}

/*
 * outputs.base.clock_text(ts), with its cache of the last second's HH:MM:SS:
 * the Python function is called once a second.
 */
static int line_clock(Core *self, double ts)
{
	double whole, frac = modf(ts, &whole), micros = nearbyint(frac * 1e6);
	int exact = micros >= 0 && micros < 1e6;
	char *o = room(self, 16);
	if (o == NULL)
		return -1;
	if (exact && self->has_second && whole == self->second) {
		memcpy(o, self->hms, 8);
		o[8] = '.';
		put_digits(o + 9, (uint64_t)micros, 6);
		self->olen += 15;
		return 0;
	}
	PyObject *text = PyObject_CallFunction(self->clock, "d", ts);
	if (text == NULL)
		return -1;
	Py_ssize_t n;
	const char *s = PyUnicode_Check(text) ? PyUnicode_AsUTF8AndSize(text, &n) : NULL;
	if (s == NULL || (o = room(self, (size_t)n)) == NULL) {
		if (!PyErr_Occurred())
			PyErr_SetString(PyExc_TypeError, "clock() must return a str");
		Py_DECREF(text);
		return -1;
	}
	memcpy(o, s, (size_t)n);
	self->olen += (size_t)n;
	if (ts >= 0 && exact && n == 15 && s[2] == ':' && s[5] == ':' && s[8] == '.') {
		self->second = whole;
		memcpy(self->hms, s, 8);
		self->has_second = 1;
	}
	Py_DECREF(text);
	return 0;
}

/*
 * outputs/decoded.py format_text of the transaction of req and the reply
 * [rp, re) sent at ts: clock, ends, request, reply, latency, two spaces apart.
 */
static int line(Core *self, struct conn *c, const struct pend *req, double ts,
		const unsigned char *rp, const unsigned char *re)
{
	struct text request, answer;
	const char *rq = request.b;
	size_t rn;
	if (req->text != NULL) {
		rq = PyBytes_AS_STRING(req->text);
		rn = (size_t)PyBytes_GET_SIZE(req->text);
	} else {
		request.n = 0;
		line_request(&request, req->raw, req->raw + req->nbytes);
		rn = request.n;
	}
	answer.n = 0;
	line_reply(&answer, rp, re, 0);
	clip(&answer);
	char latency[40];
	int ln = latency_text(latency, (ts - req->ts) * 1000.0);
	size_t hn = (size_t)PyBytes_GET_SIZE(c->names);
	if (line_clock(self, req->ts) < 0 || room(self, hn + rn + 2 + answer.n + (size_t)ln) == NULL)
		return -1;
	char *o = self->out + self->olen;
	memcpy(o, PyBytes_AS_STRING(c->names), hn);
	memcpy(o += hn, rq, rn);
	memcpy(o += rn, "  ", 2);
	memcpy(o += 2, answer.b, answer.n);
	memcpy(o + answer.n, latency, (size_t)ln);
	self->olen += hn + rn + 2 + answer.n + (size_t)ln;
	return 0;
}

/* ------------------------------------------------------------- the core */

/*
 * Queue a request: obj and text are stolen on success; or obj NULL and the
 * request raw[0:nbytes] inside owner (a new reference taken on success).
 */
static int push_pending(struct conn *c, PyObject *obj, PyObject *text, PyObject *owner,
			const unsigned char *raw, struct row *row, double ts, int64_t nbytes)
{
	if (c->len == c->cap) {
		size_t cap = c->cap ? 2 * c->cap : 16;
		struct pend *q = PyMem_Malloc(cap * sizeof *q);
		if (q == NULL) {
			PyErr_NoMemory();
			return -1;
		}
		for (size_t i = 0; i < c->len; i++)
			q[i] = c->q[(c->head + i) & (c->cap - 1)];
		PyMem_Free(c->q);
		c->q = q;
		c->cap = cap;
		c->head = 0;
	}
	struct pend *p = &c->q[(c->head + c->len) & (c->cap - 1)];
	p->obj = obj;
	p->text = text;
	p->owner = Py_XNewRef(owner);
	p->raw = raw;
	p->row = row;
	p->ts = ts;
	p->nbytes = nbytes;
	c->len++;
	return 0;
}

/* The slowest list as Stats keeps it, on latencies alone: would it take this one? */
static int slow_candidate(Core *self, double latency)
{
	double *h = self->heap;
	Py_ssize_t n = self->nheap, i = 0;
	if (n < self->top) {
		for (i = n++; i > 0 && h[(i - 1) / 2] > latency; i = (i - 1) / 2)
			h[i] = h[(i - 1) / 2];
		h[i] = latency;
		self->nheap = n;
		return 1;
	}
	if (n == 0 || latency <= h[0])
		return 0;
	for (;;) { /* replace the root, sift down */
		Py_ssize_t c = 2 * i + 1;
		if (c >= n)
			break;
		if (c + 1 < n && h[c + 1] < h[c])
			c++;
		if (h[c] >= latency)
			break;
		h[i] = h[c];
		i = c;
	}
	h[i] = latency;
	return 1;
}

/* The bucket of latency: log-linear, or the index of the first edge >= latency (bisect_left). */
static int64_t bucket_key(Core *self, double latency, int64_t ns)
{
	if (self->edges == NULL)
		return bucket_of(ns);
	Py_ssize_t lo = 0, hi = self->nedges;
	while (lo < hi) {
		Py_ssize_t mid = (lo + hi) / 2;
		if (self->edges[mid] < latency)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* r counted once more (take() returns it). */
static int tally(Core *self, struct row *r)
{
	if (r->count == 0) {
		if (self->ntouched == self->ctouched) {
			size_t cap = self->ctouched ? 2 * self->ctouched : 64;
			struct row **t = PyMem_Realloc(self->touched, cap * sizeof *t);
			if (t == NULL) {
				PyErr_NoMemory();
				return -1;
			}
			self->touched = t;
			self->ctouched = cap;
		}
		self->touched[self->ntouched++] = r;
	}
	r->count++;
	return 0;
}

/* A transaction counted: req answered by nbytes (an error or not), the first sent at ts. */
static int count(Core *self, struct conn *c, struct pend *req, double ts, int64_t nbytes,
		 int error)
{
	struct row *r = req->row;
	double latency = ts - req->ts;
	int64_t ns = nanoseconds(latency);
	if (tally(self, r) < 0)
		return -1;
	r->errors += error;
	r->bytes_in += (uint64_t)req->nbytes;
	r->bytes_out += (uint64_t)nbytes;
	r->nanoseconds += ns;
	if (hist_add(&r->hist, bucket_key(self, latency, ns)) < 0)
		return -1;
	if (!r->has_max || latency > r->max) {
		r->max = latency;
		r->has_max = 1;
	}
	self->transactions++;
	if (slow_candidate(self, latency)) {
		PyObject *obj = pend_obj(req);
		PyObject *t = obj == NULL ? NULL
					  : Py_BuildValue("(dsOO)", latency, PROTOCOLS[c->proto],
							  c->comm[0], obj);
		if (t == NULL || PyList_Append(self->slow, t) < 0) {
			Py_XDECREF(t);
			return -1;
		}
		Py_DECREF(t);
	}
	return 0;
}

static int u64(PyObject *o, uint64_t *out)
{
	*out = PyLong_AsUnsignedLongLong(o);
	return *out == (uint64_t)-1 && PyErr_Occurred() ? -1 : 0;
}

/*
 * What the core reads of a record, a Record or a Packed one (the capture makes
 * Packed records when every output takes them: outputs.base.packed_sinks).
 * data is NULL when it is no data record with a payload.
 */
struct view {
	PyObject *rec;
	struct packed *packed; /* rec as a Packed, or NULL */
	uint64_t sock, peer, off, len;
	const unsigned char *data;
	Py_ssize_t n;
};

/* 1: rec viewed; 0: not a record (the engine's: a notice, a close); -1: error */
static int view_of(PyObject *rec, struct view *v)
{
	v->rec = rec;
	if (Py_IS_TYPE(rec, API->packed_type)) {
		struct packed *p = (struct packed *)rec;
		v->packed = p;
		v->sock = p->ev.sock_id;
		v->peer = p->ev.peer_id;
		v->off = p->ev.offset;
		v->len = p->ev.len;
		v->n = Py_SIZE(p);
		v->data = v->n > 0 ? (const unsigned char *)p->data : NULL;
		return 1;
	}
	if (!PyObject_TypeCheck(rec, API->record_type))
		return 0;
	v->packed = NULL;
	v->data = NULL;
	v->n = 0;
	if (u64(SLOT(rec, R_SOCK_ID), &v->sock) < 0 || u64(SLOT(rec, R_PEER_ID), &v->peer) < 0)
		return -1;
	PyObject *data = SLOT(rec, R_DATA), *kind = SLOT(rec, R_KIND);
	if (kind != s_data && (!PyUnicode_Check(kind) ||
			       PyUnicode_CompareWithASCIIString(kind, "data") != 0))
		return 1;
	if (!PyBytes_Check(data) || PyBytes_GET_SIZE(data) == 0)
		return 1;
	if (u64(SLOT(rec, R_OFFSET), &v->off) < 0 || u64(SLOT(rec, R_LENGTH), &v->len) < 0)
		return -1;
	v->data = (const unsigned char *)PyBytes_AS_STRING(data);
	v->n = PyBytes_GET_SIZE(data);
	return 1;
}

/* what holds v's payload alive: the Packed record, or the Record's bytes */
static PyObject *payload_owner(const struct view *v)
{
	return v->packed ? v->rec : SLOT(v->rec, R_DATA);
}

static double view_ts(const struct view *v)
{
	return v->packed ? v->packed->ts : PyFloat_AsDouble(SLOT(v->rec, R_TS));
}

/* The field's object (a new reference): R_PID, R_COMM, R_INODE, R_PEER_PID or R_PEER_COMM */
static PyObject *view_field(const struct view *v, int field)
{
	const struct packed *p = v->packed;
	if (p == NULL)
		return Py_NewRef(SLOT(v->rec, field));
	switch (field) {
	case R_PID:
		return API->id_int(p->ev.pid);
	case R_COMM:
		return Py_NewRef(p->comm);
	case R_INODE:
		return API->id_int(p->ev.inode);
	case R_PEER_PID:
		return API->id_int(p->ev.peer_pid);
	default:
		return Py_NewRef(p->peer_comm);
	}
}

/* The connection of v if Core owns it (NULL: not owned). */
static struct conn *owner(Core *self, const struct view *v)
{
	uint64_t a = v->sock, b = v->peer;
	if (!self->cused || !b)
		return NULL;
	return conn_get(self, a < b ? a : b, a < b ? b : a);
}

static int view_cgroup(const struct view *v, int peer, uint64_t *out)
{
	if (v->packed != NULL) {
		*out = peer ? v->packed->ev.peer_cgroup : v->packed->ev.cgroup;
		return 0;
	}
	return u64(SLOT(v->rec, peer ? R_PEER_CGROUP : R_CGROUP), out);
}

/*
 * Decoding's _Conn.learn of v, of direction d: the process, inode and cgroup of
 * its end, and of the other end when not known.  1 done; -1 error; 0 (nothing
 * changed) with lines when it would rename an end: the ends are named at
 * adoption (Containers.label is Python's), so the engine renames them.
 */
static int learn(Core *self, struct conn *c, const struct view *v, int d)
{
	PyObject *pid = view_field(v, R_PID), *comm = view_field(v, R_COMM);
	PyObject *inode = view_field(v, R_INODE), *peer = NULL, *peer_comm = NULL;
	uint64_t cgroup, peer_cgroup = 0;
	int rc = -1, known, has = 0;
	if (pid == NULL || comm == NULL || inode == NULL || view_cgroup(v, 0, &cgroup) < 0 ||
	    (known = PyObject_IsTrue(c->pid[1 - d])) < 0)
		goto done;
	if (!known) {
		if ((peer = view_field(v, R_PEER_PID)) == NULL || (has = PyObject_IsTrue(peer)) < 0)
			goto done;
		if (has && ((peer_comm = view_field(v, R_PEER_COMM)) == NULL ||
			    view_cgroup(v, 1, &peer_cgroup) < 0))
			goto done;
	}
	if (self->clock != NULL) {
		int same = has ? 0 : PyObject_RichCompareBool(pid, c->pid[d], Py_EQ);
		if (same > 0)
			same = PyObject_RichCompareBool(comm, c->comm[d], Py_EQ);
		if (same < 0)
			goto done;
		if (!same || cgroup != c->cgroup[d]) {
			rc = 0;
			goto done;
		}
	}
	Py_SETREF(c->pid[d], pid);
	Py_SETREF(c->comm[d], comm);
	Py_SETREF(c->inode[d], inode);
	pid = comm = inode = NULL;
	c->cgroup[d] = cgroup;
	if (has) {
		Py_SETREF(c->pid[1 - d], peer);
		Py_SETREF(c->comm[1 - d], peer_comm);
		peer = peer_comm = NULL;
		c->cgroup[1 - d] = peer_cgroup;
	}
	rc = 1;
done:
	Py_XDECREF(pid);
	Py_XDECREF(comm);
	Py_XDECREF(inode);
	Py_XDECREF(peer);
	Py_XDECREF(peer_comm);
	return rc;
}

#define MAX_MESSAGES 4096 /* per record; more: the Python decoder */

/*
 * As StreamAssembler._deliver: v, of direction d sent at ts, is delivered, its
 * ends learnt (learn's 1; 0 or -1 and nothing done as it says).
 */
static int deliver(Core *self, struct conn *c, const struct view *v, int d, double ts)
{
	int rc = learn(self, c, v, d);
	if (rc <= 0)
		return rc;
	c->started[d] = 1;
	c->next[d] = (int64_t)(v->off + v->len);
	c->last_ts = ts;
	self->records++;
	return 1;
}

/* The oldest request of c, taken out of its queue (c->len > 0). */
static struct pend pop_pending(struct conn *c)
{
	struct pend req = c->q[c->head];
	c->head = (c->head + 1) & (c->cap - 1);
	c->len--;
	return req;
}

/* RESP: v of direction d, sent at ts (see handle). */
static int resp_record(Core *self, struct conn *c, const struct view *v, int d, double ts)
{
	const unsigned char *p = v->data, *end = p + v->n;
	const unsigned char *start[MAX_MESSAGES + 1];
	struct row *rows[MAX_MESSAGES];
	int m = 0;
	start[0] = p;
	while (p < end) { /* every message whole, all of a kind handled here */
		if (m == MAX_MESSAGES)
			return 0;
		p = d ? reply(self->clock != NULL, p, end, 0)
		      : command(self, c->label, p, end, &rows[m]);
		if (p == NULL)
			return PyErr_Occurred() ? -1 : 0;
		start[++m] = p;
	}
	if (d && (size_t)m > c->len)
		return 0; /* a reply without a request: the decoder's "unpaired" notice */
	int rc = deliver(self, c, v, d, ts);
	if (rc <= 0)
		return rc;
	for (int i = 0; i < m; i++) {
		int64_t size = start[i + 1] - start[i];
		if (!d) {
			if (push_pending(c, NULL, NULL, payload_owner(v), start[i], rows[i], ts,
					 size) < 0)
				return -1;
			continue;
		}
		struct pend req = pop_pending(c);
		if (self->clock != NULL) { /* the lines are the output: nothing else to count */
			self->transactions++;
			rc = line(self, c, &req, ts, start[i], start[i + 1]);
		} else {
			rc = count(self, c, &req, ts, size, *start[i] == '-');
		}
		pend_clear(&req);
		if (rc < 0)
			return -1;
	}
	return 1;
}

/* ------------------------------------------------------------------ MySQL */

#define MY_KEEP (64 * 1024) /* mysql.KEEP: a longer packet is not kept whole */
#define MY_SAMPLES 3 /* mysql.SAMPLE_ROWS: the rows of a resultset the decoder parses */
#define MY_MORE_RESULTS 0x8
#define COM_QUERY 0x03

/* _Reader.lenenc at *p: 1 (the value, 0 for NULL: null set), 0 where it raises */
static int my_lenenc(const unsigned char **p, const unsigned char *end, uint64_t *v, int *null)
{
	*null = 0;
	if (*p >= end)
		return 0;
	unsigned char first = *(*p)++;
	if (first < 0xfb || first == 0xfb) {
		*null = first == 0xfb;
		*v = first < 0xfb ? first : 0;
		return 1;
	}
	if (first == 0xff)
		return 0;
	int size = first == 0xfc ? 2 : first == 0xfd ? 3 : 8;
	if (end - *p < size)
		return 0;
	*v = 0;
	for (int i = size - 1; i >= 0; i--)
		*v = *v << 8 | (*p)[i];
	*p += size;
	return 1;
}

/* _Reader.lenstr at *p: 1 read, 0 where it raises */
static int my_lenstr(const unsigned char **p, const unsigned char *end)
{
	uint64_t n;
	int null;
	if (!my_lenenc(p, end, &n, &null))
		return 0;
	if (n > (uint64_t)(end - *p))
		return 0;
	*p += n;
	return 1;
}

/* mysql._ok of an OK payload read from p: its status flags, -1 where it raises */
static int my_ok(const unsigned char *p, const unsigned char *end)
{
	uint64_t v;
	int null;
	if (!my_lenenc(&p, end, &v, &null) || !my_lenenc(&p, end, &v, &null))
		return -1;
	return end - p >= 2 ? p[0] | p[1] << 8 : 0;
}

/* mysql._err reads the ERR payload [p, end) without raising */
static int my_err(const unsigned char *p, const unsigned char *end)
{
	int64_t n = end - p;
	return n >= 3 && (n == 3 || p[3] != '#' || n >= 9);
}

/* mysql._column reads the column definition [p, end) without raising */
static int my_column(const unsigned char *p, const unsigned char *end)
{
	uint64_t v;
	int null;
	for (int i = 0; i < 6; i++) /* catalog, schema, table, org_table, name, org_name */
		if (!my_lenstr(&p, end))
			return 0;
	return my_lenenc(&p, end, &v, &null) && end - p >= 9;
}

/* mysql._text_row reads the row [p, end) of ncols values without raising */
static int my_row(const unsigned char *p, const unsigned char *end, int64_t ncols)
{
	for (int64_t i = 0; i < ncols; i++)
		if (!my_lenstr(&p, end))
			return 0;
	return 1;
}

/*
 * One server packet (sequence id seq, payload [p, end)) of the reply st:
 * as MysqlDecoder._server and the readers of a COM_QUERY's reply.  1 read;
 * 0 where the decoder would do what is not done here (hand back).
 */
static int my_reply(struct conn *c, struct sql_reply *st, int seq, const unsigned char *p,
		    const unsigned char *end, double ts)
{
	int64_t n = end - p;
	if (seq != st->seq || n == 0)
		return 0;
	st->seq = (seq + 1) & 0xff;
	st->reply_bytes += n + 4;
	if (!st->has_reply) {
		st->ts_reply = ts;
		st->has_reply = 1;
	}
	if (n >= 3 && p[0] == 0xff && p[1] == 0xff && p[2] == 0xff)
		return 0; /* a MariaDB progress report */
	if (st->eof_pending) {
		st->eof_pending = 0;
		if (p[0] == 0xfe && n < 9)
			return 1; /* the EOF after the column definitions */
	}
	uint64_t ncols;
	int null, status;
	switch (st->state) {
	case FIRST:
		if (p[0] == 0xff) {
			st->error = 1;
			st->state = DONE;
			return my_err(p, end);
		}
		if (p[0] == 0x00) {
			status = my_ok(p + 1, end);
			st->state = DONE;
			return status >= 0 && !(status & MY_MORE_RESULTS);
		}
		if (p[0] == 0xfb || p[0] == 0xfe) /* LOCAL INFILE; a count the decoder reads so */
			return 0;
		if (!my_lenenc(&p, end, &ncols, &null) || ncols == 0 || ncols > INT32_MAX)
			return 0;
		/* with the metadata cache, a flag: are the column definitions sent? */
		st->state = c->cache_metadata && p < end && *p == 0 ? ROWS : COLUMNS;
		st->left = st->ncols = (int64_t)ncols;
		st->rows = 0;
		return 1;
	case COLUMNS:
		if (!my_column(p, end))
			return 0;
		if (--st->left == 0) {
			st->eof_pending = c->deprecate_eof != 1;
			st->state = ROWS;
		}
		return 1;
	case ROWS:
		if (p[0] == 0xfe) { /* the resultset's end: EOF or OK */
			if (n < 9)
				status = n < 3 ? -1 : n >= 5 ? p[3] | p[4] << 8 : 0;
			else
				status = my_ok(p + 1, end);
			st->state = DONE;
			return status >= 0 && !(status & MY_MORE_RESULTS);
		}
		if (p[0] == 0xff) {
			st->error = 1;
			st->state = DONE;
			return my_err(p, end);
		}
		return ++st->rows > MY_SAMPLES || my_row(p, end, st->ncols);
	default:
		return 0;
	}
}

/* The reply of a request just sent (MySQL: seq after a one-packet command) */
static const struct sql_reply SQL_FRESH = {.state = FIRST, .seq = 1};

/* A finished request's reply: (bytes, error, when its first packet was sent). */
struct sql_done {
	int64_t nbytes;
	int error;
	double ts;
};

/* SQL: the m requests [start[i], start[i + 1]) of v of rows[i] sent at ts, queued as sent. */
static int queue_requests(struct conn *c, const struct view *v, const unsigned char *const *start,
			  struct row **rows, int m, double ts)
{
	for (int i = 0; i < m; i++)
		if (push_pending(c, NULL, NULL, payload_owner(v), start[i], rows[i], ts,
				 start[i + 1] - start[i]) < 0)
			return -1;
	return 1;
}

/* SQL: the oldest n requests of c answered as done[0:n] says, counted. */
static int answer_done(Core *self, struct conn *c, const struct sql_done *done, int n)
{
	for (int i = 0; i < n; i++) {
		struct pend req = pop_pending(c);
		int rc = count(self, c, &req, done[i].ts, done[i].nbytes, done[i].error);
		pend_clear(&req);
		if (rc < 0)
			return -1;
	}
	return 1;
}

static int is_digit(unsigned char ch)
{
	return ch >= '0' && ch <= '9';
}

static int is_word(unsigned char ch) /* re's \w of an ASCII text */
{
	return ch == '_' || is_digit(ch) || ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'z');
}

static size_t digits_end(const unsigned char *s, size_t i, size_t n)
{
	while (i < n && is_digit(s[i]))
		i++;
	return i;
}

/*
 * The end of the match at i of the literals' number alternative,
 * (?<![\w.$])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b, as re finds it; 0 none.  A
 * shorter digit run than the longest is followed by a digit, where every later
 * part and \b fail: re's backtracking comes down to the choices tried below.
 */
static size_t number_end(const unsigned char *s, size_t i, size_t n)
{
	if (i > 0 && (is_word(s[i - 1]) || s[i - 1] == '.' || s[i - 1] == '$'))
		return 0;
	size_t j = i < n && s[i] == '-' ? i + 1 : i, a = digits_end(s, j, n);
	if (a == j)
		return 0;
	size_t b = a + 1 < n && s[a] == '.' && is_digit(s[a + 1]) ? digits_end(s, a + 1, n) : 0;
	for (size_t end = b ? b : a;; end = a, b = 0) { /* with the fraction, then without */
		if (end < n && (s[end] | 0x20) == 'e') {
			size_t k = end + 1;
			if (k < n && (s[k] == '-' || s[k] == '+'))
				k++;
			size_t c = digits_end(s, k, n);
			if (c > k && (c == n || !is_word(s[c])))
				return c;
		}
		if (end == n || !is_word(s[end]))
			return end;
		if (!b)
			return 0;
	}
}

/*
 * sql[0:n] with every number the literals' regexes would replace replaced by
 * ?, as re.sub would, into out (n bytes): its length, or -1 when the text has
 * what another literal or Unicode's \w and \s could take (a byte past ASCII, a
 * quote, $, a backslash, MySQL's 0x).  Without those the regexes replace
 * exactly these numbers, and none in the result: the result's shape is the
 * text's (tests/test_native_sql_fold.py compares them).
 */
static Py_ssize_t fold_numbers(const unsigned char *sql, size_t n, unsigned char *out)
{
	size_t m = 0;
	for (size_t i = 0; i < n;) {
		unsigned char ch = sql[i];
		if (ch >= 0x80 || ch == '\'' || ch == '"' || ch == '$' || ch == '\\' ||
		    (ch == 'x' && i > 0 && sql[i - 1] == '0'))
			return -1;
		size_t end = ch == '-' || is_digit(ch) ? number_end(sql, i, n) : 0;
		out[m++] = end ? '?' : ch;
		i = end ? end : i + 1;
	}
	return (Py_ssize_t)m;
}

PyDoc_STRVAR(fold_numbers_doc,
	     "fold_numbers(sql)\n--\n\nThe cache key of the SQL text sql (its numbers ?), "
	     "or None: the text itself.");

static PyObject *py_fold_numbers(PyObject *mod, PyObject *args)
{
	(void)mod;
	const char *sql;
	Py_ssize_t n;
	if (!PyArg_ParseTuple(args, "y#:fold_numbers", &sql, &n))
		return NULL;
	unsigned char *out = PyMem_Malloc(n ? (size_t)n : 1);
	if (out == NULL)
		return PyErr_NoMemory();
	Py_ssize_t m = fold_numbers((const unsigned char *)sql, (size_t)n, out);
	PyObject *folded = m < 0 ? Py_NewRef(Py_None) : PyBytes_FromStringAndSize((char *)out, m);
	PyMem_Free(out);
	return folded;
}

/*
 * The --stats key of sql[0:n] (the shape callable's, kept: SHAPES of them):
 * 1 and *out (NULL: the decoder must see the statement), -1 error.  Texts
 * that differ only in numbers (pgbench -S: aid = 52345) are one entry, the
 * numbers folded (fold_numbers), and the callable is asked of the folded text:
 * a query of a new number costs no call of Python.
 */
#define SHAPES 4096
#define SHAPE_BYTES (16 << 20)

static void shape_free(struct shape *e)
{
	PyMem_Free(e->sql);
	PyMem_Free(e->key);
	PyMem_Free(e);
}

static void shapes_clear(Core *self)
{
	for (size_t i = 0; i < self->scap; i++) {
		if (self->shapes[i] != NULL)
			shape_free(self->shapes[i]);
		self->shapes[i] = NULL;
	}
	self->sused = 0;
	self->sbytes = 0;
}

static int shape_at(Core *self, enum proto proto, const unsigned char *sql, size_t n,
		    const struct shape **out)
{
	uint64_t h = hash_bytes(sql, n) ^ mix(~(uint64_t)proto);
	size_t mask = self->scap - 1, j = h & mask;
	for (; self->shapes[j] != NULL; j = (j + 1) & mask) {
		struct shape *e = self->shapes[j];
		if (e->hash == h && e->proto == proto && e->sqllen == n && !memcmp(e->sql, sql, n)) {
			*out = e;
			return 1;
		}
	}
	PyObject *key = PyObject_CallFunction(self->shape, "sy#", PROTOCOLS[proto], sql,
					      (Py_ssize_t)n);
	if (key == NULL)
		return -1;
	if (key != Py_None && !PyBytes_Check(key)) {
		Py_DECREF(key);
		PyErr_SetString(PyExc_TypeError, "shape() must return bytes or None");
		return -1;
	}
	size_t keylen = key == Py_None ? 0 : (size_t)PyBytes_GET_SIZE(key);
	if (self->sused == SHAPES || self->sbytes + n + keylen > SHAPE_BYTES) {
		shapes_clear(self); /* bounded: a client of ever new texts starts it over */
		j = h & mask;
	}
	struct shape *e = PyMem_Calloc(1, sizeof *e);
	unsigned char *copy = PyMem_Malloc(n ? n : 1), *k = PyMem_Malloc(keylen ? keylen : 1);
	if (e == NULL || copy == NULL || k == NULL) {
		PyMem_Free(e);
		PyMem_Free(copy);
		PyMem_Free(k);
		Py_DECREF(key);
		PyErr_NoMemory();
		return -1;
	}
	memcpy(copy, sql, n);
	e->proto = proto;
	e->hash = h;
	e->sql = copy;
	e->sqllen = n;
	if (key == Py_None) {
		PyMem_Free(k);
	} else {
		memcpy(k, PyBytes_AS_STRING(key), keylen);
		e->key = k;
		e->keylen = keylen;
	}
	Py_DECREF(key);
	self->shapes[j] = e;
	self->sused++;
	self->sbytes += n + keylen;
	*out = e;
	return 1;
}

static int shape_of(Core *self, enum proto proto, const unsigned char *sql, size_t n,
		    const struct shape **out)
{
	unsigned char *folded = PyMem_Malloc(n ? n : 1);
	if (folded == NULL) {
		PyErr_NoMemory();
		return -1;
	}
	Py_ssize_t m = fold_numbers(sql, n, folded);
	int rc = m < 0 ? shape_at(self, proto, sql, n, out)
		       : shape_at(self, proto, folded, (size_t)m, out);
	PyMem_Free(folded);
	return rc;
}

/* The row of c's request of SQL text sql[0:n]: 1 (*row); 0 the decoder must see it; -1 error */
static int sql_row(Core *self, struct conn *c, const unsigned char *sql, size_t n,
		   struct row **row)
{
	const struct shape *shape;
	if (shape_of(self, c->proto, sql, n, &shape) < 0)
		return -1;
	if (shape->key == NULL)
		return 0;
	*row = row_get(self, c->proto, c->label, shape->key, shape->keylen);
	return *row == NULL ? -1 : 1;
}

/*
 * MySQL in the command phase: v of direction d, sent at ts.  The client's
 * records hold whole COM_QUERY packets; the server's whole packets of the
 * replies (OK, ERR, a text resultset) to the commands sent (see handle).
 */
static int mysql_record(Core *self, struct conn *c, const struct view *v, int d, double ts)
{
	const unsigned char *p = v->data, *end = p + v->n;
	const unsigned char *start[MAX_MESSAGES + 1];
	struct row *rows[MAX_MESSAGES];
	struct sql_done done[MAX_MESSAGES];
	struct sql_reply st = c->reply;
	int m = 0, ndone = 0, done_seq = c->done_seq;
	start[0] = p;
	while (p < end) { /* every packet whole, all of a kind handled here */
		if (m == MAX_MESSAGES || end - p < 4)
			return 0;
		int64_t len = p[0] | p[1] << 8 | p[2] << 16;
		int seq = p[3];
		const unsigned char *payload = p + 4;
		if (len > MY_KEEP || len > end - payload)
			return 0;
		p = payload + len;
		start[++m] = p;
		if (!d) { /* a COM_QUERY, the query's text whole */
			if (seq != 0 || len < 1 || payload[0] != COM_QUERY)
				return 0;
			int rc = sql_row(self, c, payload + 1, (size_t)len - 1, &rows[m - 1]);
			if (rc <= 0)
				return rc;
			continue;
		}
		if ((size_t)ndone >= c->len || !my_reply(c, &st, seq, payload, p, ts))
			return 0; /* a packet without a command; or one the decoder reads alone */
		if (st.state == DONE) {
			done[ndone++] = (struct sql_done){st.reply_bytes, st.error, st.ts_reply};
			done_seq = st.seq;
			st = SQL_FRESH;
		}
	}
	int rc = deliver(self, c, v, d, ts);
	if (rc <= 0)
		return rc;
	if (!d)
		return queue_requests(c, v, start, rows, m, ts);
	c->reply = st;
	c->done_seq = done_seq;
	return answer_done(self, c, done, ndone);
}

/* ------------------------------------------------------------- PostgreSQL */

#define PG_KEEP (64 * 1024) /* postgres.KEEP: a longer body is not kept whole */
#define PG_MAX_PENDING 4096 /* postgres.MAX_PENDING */

/*
 * PostgreSQL's simple query protocol: v of direction d, sent at ts.  The
 * client's records hold whole Query messages; the server's whole messages of
 * the replies to the requests waiting (RowDescription, DataRow,
 * CommandComplete, EmptyQueryResponse, ErrorResponse, ReadyForQuery), which
 * PostgresDecoder reads without fail (see handle).
 */
static int pg_record(Core *self, struct conn *c, const struct view *v, int d, double ts)
{
	const unsigned char *p = v->data, *end = p + v->n, *err = NULL;
	const unsigned char *start[MAX_MESSAGES + 1];
	struct row *rows[MAX_MESSAGES];
	struct sql_done done[MAX_MESSAGES];
	struct sql_reply st = c->reply;
	int m = 0, ndone = 0;
	size_t errlen = 0;
	start[0] = p;
	while (p < end) { /* every message whole, all of a kind handled here */
		if (m == MAX_MESSAGES || end - p < 5)
			return 0;
		int kind = p[0];
		uint64_t length = (uint64_t)p[1] << 24 | p[2] << 16 | p[3] << 8 | p[4];
		const unsigned char *body = p + 5;
		if (length < 4 || length - 4 > PG_KEEP || length - 4 > (uint64_t)(end - body))
			return 0;
		size_t size = (size_t)length - 4;
		p = body + size;
		start[++m] = p;
		if (!d) { /* a Query, its text NUL-terminated */
			const unsigned char *nul = memchr(body, 0, size);
			if (kind != 'Q' || nul == NULL || c->len + (size_t)m > PG_MAX_PENDING)
				return 0;
			int rc = sql_row(self, c, body, (size_t)(nul - body), &rows[m - 1]);
			if (rc <= 0)
				return rc;
			continue;
		}
		if ((size_t)ndone >= c->len)
			return 0; /* a message without a request */
		st.reply_bytes += (int64_t)length + 1;
		if (!st.has_reply) {
			st.ts_reply = ts;
			st.has_reply = 1;
		}
		switch (kind) {
		case 'T':
		case 'C':
		case 'I':
			break;
		case 'D':
			st.rows++;
			st.row_bytes += (int64_t)size;
			break;
		case 'E':
			st.error = 1;
			err = body;
			errlen = size;
			break;
		case 'Z':
			done[ndone++] = (struct sql_done){st.reply_bytes, st.error, st.ts_reply};
			st = SQL_FRESH;
			err = NULL;
			break;
		default:
			return 0; /* notices, parameters, notifications, COPY, the extended protocol */
		}
	}
	int rc = deliver(self, c, v, d, ts);
	if (rc <= 0)
		return rc;
	if (!d)
		return queue_requests(c, v, start, rows, m, ts);
	if (err != NULL) {
		PyObject *body = PyBytes_FromStringAndSize((const char *)err, (Py_ssize_t)errlen);
		if (body == NULL)
			return -1;
		Py_XSETREF(c->error, body);
	} else if (ndone) {
		Py_CLEAR(c->error);
	}
	c->reply = st;
	return answer_done(self, c, done, ndone);
}

/*
 * Handle v of c if it can be done exactly: 1 done, 0 not (nothing
 * changed), -1 error.
 */
static int handle(Core *self, struct conn *c, const struct view *v)
{
	if (v->data == NULL)
		return 0;
	int d = v->sock == c->server;
	if (v->len != (uint64_t)v->n || v->off != (c->started[d] ? (uint64_t)c->next[d] : 0))
		return 0;
	double ts = view_ts(v);
	if (ts == -1.0 && PyErr_Occurred())
		return -1;
	switch (c->proto) {
	case MYSQL:
		return mysql_record(self, c, v, d, ts);
	case POSTGRES:
		return pg_record(self, c, v, d, ts);
	case OPAQUE: {
		int rc = deliver(self, c, v, d, ts);
		return rc <= 0 ? rc : tally(self, c->opaque) < 0 ? -1 : 1;
	}
	default:
		return resp_record(self, c, v, d, ts);
	}
}

/* The state of c for the Python engine (fast.py: Handback), and c forgotten. */
static PyObject *release(Core *self, struct conn *c)
{
	PyObject *pending = PyList_New((Py_ssize_t)c->len);
	if (pending == NULL)
		return NULL;
	for (size_t i = 0; i < c->len; i++) {
		struct pend *p = &c->q[(c->head + i) & (c->cap - 1)];
		PyObject *obj = pend_obj(p);
		PyObject *t = obj == NULL ? NULL : Py_BuildValue("(OdL)", obj, p->ts, (long long)p->nbytes);
		if (t == NULL) {
			Py_DECREF(pending);
			return NULL;
		}
		PyList_SET_ITEM(pending, (Py_ssize_t)i, t);
	}
	PyObject *mine = Py_NewRef(Py_None); /* the decoder's state (decoders.engine.HandoverState) */
	if (c->proto == MYSQL) {
		const struct sql_reply *st = &c->reply;
		PyObject *head = Py_NewRef(Py_None), *ts_reply = Py_NewRef(Py_None);
		if (st->has_reply)
			Py_SETREF(ts_reply, PyFloat_FromDouble(st->ts_reply));
		if (c->len && ts_reply != NULL)
			Py_SETREF(head, Py_BuildValue("(sLOiLOOLL)", REPLIES[st->state],
						      (long long)st->left,
						      st->eof_pending ? Py_True : Py_False, st->seq,
						      (long long)st->reply_bytes, ts_reply,
						      st->error ? Py_True : Py_False,
						      (long long)st->ncols, (long long)st->rows));
		Py_XDECREF(ts_reply);
		PyObject *done = c->done_seq < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(c->done_seq);
		Py_SETREF(mine, head == NULL || done == NULL
					? NULL
					: Py_BuildValue("(OOOO)", c->deprecate_eof ? Py_True : Py_False,
							done, c->cache_metadata ? Py_True : Py_False,
							head));
		Py_XDECREF(done);
		Py_XDECREF(head);
	}
	if (c->proto == POSTGRES) {
		const struct sql_reply *st = &c->reply;
		Py_SETREF(mine, Py_BuildValue("(O)", Py_None));
		if (c->len && st->has_reply && mine != NULL)
			Py_SETREF(mine, Py_BuildValue("((LdOLL))", (long long)st->reply_bytes,
						      st->ts_reply, c->error ? c->error : Py_None,
						      (long long)st->rows, (long long)st->row_bytes));
	}
	if (mine == NULL) {
		Py_DECREF(pending);
		return NULL;
	}
	PyObject *state = Py_BuildValue(
		"((KK)K(LL)(OO)d(OO)(OO)(OO)(KK)NN)", (unsigned long long)c->lo,
		(unsigned long long)c->hi, (unsigned long long)c->server, (long long)c->next[0],
		(long long)c->next[1], c->started[0] ? Py_True : Py_False,
		c->started[1] ? Py_True : Py_False, c->last_ts, c->pid[0], c->pid[1], c->comm[0],
		c->comm[1], c->inode[0], c->inode[1], (unsigned long long)c->cgroup[0],
		(unsigned long long)c->cgroup[1], pending, mine);
	if (state == NULL)
		return NULL;
	conn_del(self, c);
	conn_free(c);
	return state;
}

/* ------------------------------------------------------- socket counters */

/*
 * Start loading a record a loop over a batch reaches a few steps later: its
 * header fields and (payload) its payload's first lines.  By the time an
 * output reads a batch it has left the cache (docs/performance.md, section 5).
 * Read as a Packed: a Record's fields are elsewhere, and a prefetch never faults.
 */
static void fetch_ahead(PyObject *rec, int payload)
{
	const struct packed *p = (const struct packed *)rec;
	__builtin_prefetch(p);
	__builtin_prefetch(&p->ev.cgroup);
	__builtin_prefetch(&p->ev.flags);
	__builtin_prefetch(&p->path);
	if (payload) {
		__builtin_prefetch(p->data);
		__builtin_prefetch(p->data + 64);
	}
}

/*
 * The per-record counters of --metrics (Metrics.add_records), for every
 * record of a batch whichever path decodes it: a Python loop over the records
 * costs about as much as the native path's decoding of them.
 */
struct side {
	PyObject *path;
	Py_hash_t hash;
	int own;
	uint64_t cgroup, messages, bytes, lost;
};

PyDoc_STRVAR(sockets_doc, "sockets(batch)\n--\n\n"
	     "Per (path, path_is_own, cgroup), in the order of their first record, the "
	     "messages, bytes and lost bytes of batch's records (closes left out).");

static PyObject *py_sockets(PyObject *mod, PyObject *batch)
{
	(void)mod;
	if (!PyList_Check(batch)) {
		PyErr_SetString(PyExc_TypeError, "sockets(batch: list)");
		return NULL;
	}
	Py_ssize_t n = PyList_GET_SIZE(batch);
	size_t cap = 16, used = 0;
	while (cap < 2 * (size_t)n)
		cap *= 2;
	struct side *sides = PyMem_Calloc((size_t)(n ? n : 1), sizeof *sides);
	size_t *table = PyMem_Malloc(cap * sizeof *table);
	PyObject *out = NULL;
	if (sides == NULL || table == NULL) {
		PyErr_NoMemory();
		goto done;
	}
	for (size_t i = 0; i < cap; i++)
		table[i] = SIZE_MAX;
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *rec = PyList_GET_ITEM(batch, i), *path;
		uint64_t cgroup, lost, length, flags;
		if (i + 8 < n)
			fetch_ahead(PyList_GET_ITEM(batch, i + 8), 0);
		int own;
		if (Py_IS_TYPE(rec, API->packed_type)) { /* a data record: nothing lost */
			struct packed *p = (struct packed *)rec;
			path = p->path;
			own = PyObject_IsTrue(p->path_is_own);
			cgroup = p->ev.cgroup;
			lost = 0;
			length = p->ev.len;
			flags = p->ev.flags;
		} else if (PyObject_TypeCheck(rec, API->record_type)) {
			PyObject *kind = SLOT(rec, R_KIND);
			if (kind == s_close || (kind != s_data && PyUnicode_Check(kind) &&
						PyUnicode_CompareWithASCIIString(kind, "close") == 0))
				continue;
			path = SLOT(rec, R_PATH);
			own = PyObject_IsTrue(SLOT(rec, R_PATH_IS_OWN));
			if (u64(SLOT(rec, R_CGROUP), &cgroup) < 0 || u64(SLOT(rec, R_LOST), &lost) < 0 ||
			    u64(SLOT(rec, R_LENGTH), &length) < 0 || u64(SLOT(rec, R_FLAGS), &flags) < 0)
				goto done;
		} else {
			PyErr_SetString(PyExc_TypeError, "sockets() takes a list of records");
			goto done;
		}
		Py_hash_t h = PyObject_Hash(path);
		if (h == -1 || own < 0)
			goto done;
		size_t j = mix((uint64_t)h ^ mix(cgroup + (uint64_t)own)) & (cap - 1);
		struct side *side = NULL;
		for (; table[j] != SIZE_MAX; j = (j + 1) & (cap - 1)) {
			struct side *e = &sides[table[j]];
			if (e->hash != h || e->own != own || e->cgroup != cgroup)
				continue;
			int eq = e->path == path ? 1 : PyObject_RichCompareBool(e->path, path, Py_EQ);
			if (eq < 0)
				goto done;
			if (eq) {
				side = e;
				break;
			}
		}
		if (side == NULL) {
			table[j] = used;
			side = &sides[used++];
			side->path = Py_NewRef(path);
			side->hash = h;
			side->own = own;
			side->cgroup = cgroup;
		}
		if (lost) {
			side->lost += lost;
		} else {
			side->bytes += length;
			side->messages += flags & 1; /* FLAG_MSG_START: one per send() */
		}
	}
	if ((out = PyList_New((Py_ssize_t)used)) == NULL)
		goto done;
	for (size_t i = 0; i < used; i++) {
		struct side *e = &sides[i];
		PyObject *t = Py_BuildValue("(OOKKKK)", e->path, e->own ? Py_True : Py_False,
					    (unsigned long long)e->cgroup,
					    (unsigned long long)e->messages,
					    (unsigned long long)e->bytes, (unsigned long long)e->lost);
		if (t == NULL) {
			Py_CLEAR(out);
			goto done;
		}
		PyList_SET_ITEM(out, (Py_ssize_t)i, t);
	}
done:
	for (size_t i = 0; sides != NULL && i < used; i++)
		Py_DECREF(sides[i].path);
	PyMem_Free(sides);
	PyMem_Free(table);
	return out;
}

PyDoc_STRVAR(feed_doc, "feed(batch, start, most)\n--\n\n"
	     "Handle batch[start:] up to the first record not handled, j: (j, k, handback),\n"
	     "k the next record Core owns after j, or j + most, or the end.");

static PyObject *core_feed(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
	if (nargs != 3 || !PyList_Check(args[0])) {
		PyErr_SetString(PyExc_TypeError, "feed(batch: list, start: int, most: int)");
		return NULL;
	}
	PyObject *batch = args[0];
	Py_ssize_t n = PyList_GET_SIZE(batch), i = PyLong_AsSsize_t(args[1]);
	Py_ssize_t most = PyLong_AsSsize_t(args[2]);
	if ((i == -1 || most == -1) && PyErr_Occurred())
		return NULL;
	if (most < 1) {
		PyErr_SetString(PyExc_ValueError, "feed: most must be positive");
		return NULL;
	}
	PyObject *state = Py_NewRef(Py_None);
	struct view v;
	for (; i < n; i++) {
		if (i + 4 < n)
			fetch_ahead(PyList_GET_ITEM(batch, i + 4), 1);
		int rc = view_of(PyList_GET_ITEM(batch, i), &v);
		if (rc <= 0) {
			if (rc < 0)
				goto error;
			break;
		}
		struct conn *c = owner(self, &v);
		if (c == NULL)
			break;
		rc = handle(self, c, &v);
		if (rc < 0)
			goto error;
		if (rc == 0) {
			Py_SETREF(state, release(self, c));
			if (state == NULL)
				return NULL;
			break;
		}
	}
	/* bounded: a batch of records Core does not own is scanned once, not once per run */
	Py_ssize_t k = i < n ? i + 1 : n, end = i < n - most ? i + most : n;
	for (; k < end; k++) {
		int rc = view_of(PyList_GET_ITEM(batch, k), &v);
		if (rc < 0)
			goto error;
		if (rc > 0 && owner(self, &v) != NULL)
			break;
	}
	return Py_BuildValue("(nnN)", i, k, state);
error:
	Py_DECREF(state);
	return NULL;
}

PyDoc_STRVAR(adopt_doc, "adopt(key, server, next, started, last_ts, pids, comms, inodes, "
			"cgroups, pending, label, names, protocol, state)\n--\n\n"
			"Take a connection over from the Python engine.");

static PyObject *core_adopt(Core *self, PyObject *args)
{
	unsigned long long lo, hi, server, label, g0, g1;
	long long n0, n1;
	int s0, s1;
	double last_ts;
	PyObject *p0, *p1, *c0, *c1, *i0, *i1, *pending, *names, *mine;
	const char *protocol;
	if (!PyArg_ParseTuple(args, "(KK)K(LL)(pp)d(OO)(OO)(OO)(KK)O!KOsO", &lo, &hi, &server, &n0,
			      &n1, &s0, &s1, &last_ts, &p0, &p1, &c0, &c1, &i0, &i1, &g0, &g1,
			      &PyList_Type, &pending, &label, &names, &protocol, &mine))
		return NULL;
	enum proto proto = RESP;
	struct row *opaque = NULL;
	int deprecate_eof = 0, cache_metadata = 0, done_seq = -1;
	if (strcmp(protocol, "mysql") == 0) {
		PyObject *done;
		proto = MYSQL;
		PyObject *head;
		if (!PyArg_ParseTuple(mine, "pOpO", &deprecate_eof, &done, &cache_metadata, &head))
			return NULL;
		if (head != Py_None) {
			PyErr_SetString(PyExc_ValueError, "a mysql connection whose reply has begun");
			return NULL;
		}
		if (done != Py_None && ((done_seq = (int)PyLong_AsLong(done)) == -1 && PyErr_Occurred()))
			return NULL;
		if (self->clock != NULL || self->shape == NULL) {
			PyErr_SetString(PyExc_ValueError, "a mysql connection: no lines, shapes given");
			return NULL;
		}
	} else if (strcmp(protocol, "postgres") == 0) {
		proto = POSTGRES;
		if (self->clock != NULL || self->shape == NULL) {
			PyErr_SetString(PyExc_ValueError, "a postgres connection: no lines, shapes given");
			return NULL;
		}
	} else if (strcmp(protocol, "opaque") == 0) {
		proto = OPAQUE;
		if (self->clock != NULL || PyList_GET_SIZE(pending) != 0) {
			PyErr_SetString(PyExc_ValueError, "an opaque connection: no lines, no requests");
			return NULL;
		}
		if ((opaque = row_get(self, OPAQUE, label, (const unsigned char *)"", 0)) == NULL)
			return NULL;
	} else if (strcmp(protocol, "resp") != 0) {
		PyErr_Format(PyExc_ValueError, "no native path for %s", protocol);
		return NULL;
	}
	if (conn_get(self, lo, hi) != NULL) {
		PyErr_SetString(PyExc_ValueError, "connection already adopted");
		return NULL;
	}
	if (self->clock != NULL && !PyBytes_Check(names)) {
		PyErr_SetString(PyExc_TypeError, "a core with lines needs each connection's names");
		return NULL;
	}
	struct conn *c = PyMem_Calloc(1, sizeof *c);
	if (c == NULL)
		return PyErr_NoMemory();
	c->proto = proto;
	c->opaque = opaque;
	c->deprecate_eof = deprecate_eof;
	c->cache_metadata = cache_metadata;
	c->done_seq = done_seq;
	c->reply = SQL_FRESH;
	c->lo = lo;
	c->hi = hi;
	c->server = server;
	c->label = label;
	c->next[0] = n0;
	c->next[1] = n1;
	c->started[0] = s0;
	c->started[1] = s1;
	c->last_ts = last_ts;
	c->pid[0] = Py_NewRef(p0);
	c->pid[1] = Py_NewRef(p1);
	c->comm[0] = Py_NewRef(c0);
	c->comm[1] = Py_NewRef(c1);
	c->inode[0] = Py_NewRef(i0);
	c->inode[1] = Py_NewRef(i1);
	c->cgroup[0] = g0;
	c->cgroup[1] = g1;
	c->names = self->clock != NULL ? Py_NewRef(names) : NULL;
	/* pending: (request, command key bytes, ts, nbytes, text) of the decoder's requests */
	for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pending); i++) {
		PyObject *obj, *key, *text;
		double ts;
		long long nbytes;
		if (!PyArg_ParseTuple(PyList_GET_ITEM(pending, i), "OSdLO", &obj, &key, &ts, &nbytes,
				      &text))
			goto error;
		if (self->clock != NULL && !PyBytes_Check(text)) {
			PyErr_SetString(PyExc_TypeError, "a core with lines needs each request's text");
			goto error;
		}
		struct row *r = row_get(self, proto, label,
					(const unsigned char *)PyBytes_AS_STRING(key),
					(size_t)PyBytes_GET_SIZE(key));
		if (r == NULL ||
		    push_pending(c, Py_NewRef(obj), self->clock != NULL ? Py_NewRef(text) : NULL,
				 NULL, NULL, r, ts, nbytes) < 0)
			goto error;
	}
	if (conn_put(self, c) < 0)
		goto error;
	Py_RETURN_NONE;
error:
	conn_free(c);
	return NULL;
}

PyDoc_STRVAR(release_all_doc, "release_all()\n--\n\nHand every connection back: their states.");

static PyObject *core_release_all(Core *self, PyObject *unused)
{
	(void)unused;
	PyObject *out = PyList_New(0);
	while (out != NULL && self->cused) {
		struct conn *c = NULL;
		for (size_t i = 0; c == NULL; i++)
			c = self->conns[i];
		PyObject *state = release(self, c);
		if (state == NULL || PyList_Append(out, state) < 0)
			Py_CLEAR(out);
		Py_XDECREF(state);
	}
	return out;
}

PyDoc_STRVAR(seed_doc, "seed(latencies)\n--\n\nThe latencies of the slowest list now.");

static PyObject *core_seed(Core *self, PyObject *arg)
{
	PyObject *seq = PySequence_Fast(arg, "seed() takes a sequence of floats");
	if (seq == NULL)
		return NULL;
	self->nheap = 0;
	for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq) && i < self->top; i++) {
		double v = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
		if (v == -1.0 && PyErr_Occurred()) {
			Py_DECREF(seq);
			return NULL;
		}
		slow_candidate(self, v);
	}
	Py_DECREF(seq);
	Py_RETURN_NONE;
}

PyDoc_STRVAR(take_doc, "take()\n--\n\n"
	     "What was counted since the last take: (rows, slow, transactions, records).");

static PyObject *core_take(Core *self, PyObject *unused)
{
	(void)unused;
	PyObject *rows = PyList_New(0), *slow = self->slow;
	if (rows == NULL)
		return NULL;
	for (size_t i = 0; i < self->ntouched; i++) {
		struct row *r = self->touched[i];
		PyObject *hist = PyDict_New();
		for (size_t j = 0; hist != NULL && j < r->hist.cap; j++) {
			if (r->hist.keys[j] == INT64_MIN || !r->hist.counts[j])
				continue;
			PyObject *k = PyLong_FromLongLong(r->hist.keys[j]);
			PyObject *v = PyLong_FromUnsignedLongLong(r->hist.counts[j]);
			if (k == NULL || v == NULL || PyDict_SetItem(hist, k, v) < 0)
				Py_CLEAR(hist);
			Py_XDECREF(k);
			Py_XDECREF(v);
			r->hist.counts[j] = 0;
		}
		PyObject *t = hist == NULL ? NULL
					   : Py_BuildValue("(KsOKKKKNdL)", (unsigned long long)r->label,
							   PROTOCOLS[r->proto], r->command, r->count, r->errors, r->bytes_in,
							   r->bytes_out, hist, r->max,
							   (long long)r->nanoseconds);
		if (t == NULL || PyList_Append(rows, t) < 0) {
			Py_XDECREF(t);
			Py_DECREF(rows);
			return NULL;
		}
		Py_DECREF(t);
		r->count = r->errors = r->bytes_in = r->bytes_out = 0;
		r->nanoseconds = 0;
		r->has_max = 0;
	}
	self->ntouched = 0;
	if ((self->slow = PyList_New(0)) == NULL) {
		self->slow = slow;
		Py_DECREF(rows);
		return NULL;
	}
	PyObject *out = Py_BuildValue("(NNKK)", rows, slow, self->transactions, self->records);
	self->transactions = self->records = 0;
	return out;
}

PyDoc_STRVAR(lines_doc, "lines()\n--\n\nThe text lines rendered since the last call.");

static PyObject *core_lines(Core *self, PyObject *unused)
{
	(void)unused;
	PyObject *text = PyUnicode_DecodeUTF8(self->out, (Py_ssize_t)self->olen, "strict");
	if (text != NULL)
		self->olen = 0;
	return text;
}

static PyObject *core_owned(Core *self, void *closure)
{
	(void)closure;
	return PyLong_FromSize_t(self->cused);
}

/* The histogram's edges, from a sequence of floats in ascending order. */
static int core_edges(Core *self, PyObject *edges)
{
	PyObject *seq = PySequence_Fast(edges, "edges must be a sequence of floats");
	if (seq == NULL)
		return -1;
	Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
	self->edges = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(double));
	if (self->edges == NULL) {
		Py_DECREF(seq);
		PyErr_NoMemory();
		return -1;
	}
	for (Py_ssize_t i = 0; i < n; i++) {
		double v = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
		if (v == -1.0 && PyErr_Occurred()) {
			Py_DECREF(seq);
			return -1;
		}
		if (isnan(v) || (i && !(v > self->edges[i - 1]))) {
			Py_DECREF(seq);
			PyErr_SetString(PyExc_ValueError, "edges must be ascending numbers");
			return -1;
		}
		self->edges[i] = v;
	}
	self->nedges = n;
	Py_DECREF(seq);
	return 0;
}

static PyObject *core_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
	static char *names[] = {"containers", "stateful", "top", "edges", "clock", "shape", NULL};
	PyObject *containers, *stateful, *edges = Py_None, *clock = Py_None, *shape = Py_None;
	Py_ssize_t top;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O!n|OOO", names, &PyFrozenSet_Type,
					 &containers, &PyFrozenSet_Type, &stateful, &top, &edges,
					 &clock, &shape))
		return NULL;
	if (top < 0) {
		PyErr_SetString(PyExc_ValueError, "top must be >= 0");
		return NULL;
	}
	Core *self = (Core *)type->tp_alloc(type, 0);
	if (self == NULL)
		return NULL;
	self->containers = Py_NewRef(containers);
	self->stateful = Py_NewRef(stateful);
	self->top = top;
	self->clock = clock != Py_None ? Py_NewRef(clock) : NULL;
	if (shape != Py_None) {
		self->shape = Py_NewRef(shape);
		self->scap = 2 * SHAPES;
		if ((self->shapes = PyMem_Calloc(self->scap, sizeof *self->shapes)) == NULL) {
			Py_DECREF(self);
			return PyErr_NoMemory();
		}
	}
	self->heap = PyMem_Malloc((size_t)(top ? top : 1) * sizeof(double));
	self->slow = PyList_New(0);
	if (self->heap == NULL || self->slow == NULL) {
		Py_DECREF(self);
		return PyErr_NoMemory();
	}
	if (edges != Py_None && core_edges(self, edges) < 0) {
		Py_DECREF(self);
		return NULL;
	}
	return (PyObject *)self;
}

static void core_dealloc(Core *self)
{
	for (size_t i = 0; i < self->ccap; i++)
		if (self->conns[i] != NULL)
			conn_free(self->conns[i]);
	PyMem_Free(self->conns);
	for (size_t i = 0; i < self->rcap; i++) {
		struct row *r = self->rows[i];
		if (r == NULL)
			continue;
		Py_XDECREF(r->command);
		PyMem_Free(r->key);
		PyMem_Free(r->hist.keys);
		PyMem_Free(r->hist.counts);
		PyMem_Free(r);
	}
	PyMem_Free(self->rows);
	if (self->shapes != NULL)
		shapes_clear(self);
	PyMem_Free(self->shapes);
	Py_XDECREF(self->shape);
	PyMem_Free(self->touched);
	PyMem_Free(self->edges);
	PyMem_Free(self->heap);
	Py_XDECREF(self->slow);
	Py_XDECREF(self->containers);
	Py_XDECREF(self->stateful);
	Py_XDECREF(self->clock);
	PyMem_Free(self->out);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef core_methods[] = {
	{"feed", (PyCFunction)(void (*)(void))core_feed, METH_FASTCALL, feed_doc},
	{"adopt", (PyCFunction)core_adopt, METH_VARARGS, adopt_doc},
	{"release_all", (PyCFunction)core_release_all, METH_NOARGS, release_all_doc},
	{"seed", (PyCFunction)core_seed, METH_O, seed_doc},
	{"take", (PyCFunction)core_take, METH_NOARGS, take_doc},
	{"lines", (PyCFunction)core_lines, METH_NOARGS, lines_doc},
	{NULL, NULL, 0, NULL},
};

static PyGetSetDef core_getset[] = {
	{"owned", (getter)core_owned, NULL, "connections owned", NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CoreType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = MODULE ".Core",
	.tp_basicsize = sizeof(Core),
	.tp_dealloc = (destructor)core_dealloc,
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = PyDoc_STR("RESP and SQL connections decoded and counted in C (see _fast.c)."),
	.tp_methods = core_methods,
	.tp_getset = core_getset,
	.tp_new = core_new,
};

static PyMethodDef module_methods[] = {
	{"bucket", py_bucket, METH_O, bucket_doc},
	{"bucket_middle", py_bucket_middle, METH_O, bucket_middle_doc},
	{"sockets", py_sockets, METH_O, sockets_doc},
	{"fold_numbers", py_fold_numbers, METH_VARARGS, fold_numbers_doc},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT,
	.m_name = MODULE,
	.m_doc = "The native path of the statistics table and of --metrics (see _fast.c).",
	.m_size = -1,
	.m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__fast(void)
{
	if ((API = events_api()) == NULL)
		return NULL;
	if ((s_data = PyUnicode_InternFromString("data")) == NULL ||
	    (s_close = PyUnicode_InternFromString("close")) == NULL)
		return NULL;
	if (PyType_Ready(&CoreType) < 0)
		return NULL;
	PyObject *m = PyModule_Create(&module);
	if (m == NULL)
		return NULL;
	if (PyModule_AddObjectRef(m, "Core", (PyObject *)&CoreType) < 0 ||
	    PyModule_AddIntConstant(m, "SUB_BITS", SUB_BITS) < 0) {
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
