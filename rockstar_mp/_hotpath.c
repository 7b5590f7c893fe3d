/* rockstar_mp._hotpath: the per-request path of MetricsMiddleware in C (optional accelerator).
 *
 * Same behaviour as the pure-Python path in rockstar_mp/worker/wsgi.py and workload.py, which remains
 * the reference and the fallback when this module is not built. Every offset and constant comes from
 * Python (rockstar_mp.segment.layout, rockstar_mp.sketch) through configure() and Slab(); nothing about
 * the segment's byte layout is defined here. First-time lookups (a new status line, route, bucket)
 * call back into Python, which fills the caches this code reads. The hold (worker/hold.py) is done here
 * with setsockopt(2) directly.
 *
 * Runs with the GIL held throughout, so a request's stores are never interleaved with another
 * thread's (gthread workers): no lock. Stores a reader in another process depends on are ordered with
 * release stores (the sequence after the payload, the head after the sequence, the in-flight count
 * after its fields).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

/* ---------------------------------------------------------------- configuration (from Python) */
static double bucket_scale = 0.0;   /* sketch.BUCKET_SCALE */
static double min_seconds = 1e-6;   /* sketch.MIN_SECONDS */
static long block_width = 1;        /* sketch.BUCKETS_PER_BLOCK */
/* The fields of a workload record (layout.RECORD_FIELDS), as record() writes them. */
enum { F_START, F_DURATION, F_BYTES, F_PID, F_STATUS, F_METHOD, F_ROUTE, F_REQUEST_ID, F_TENANT, RECORD_FIELDS };
static const struct { const char *name; Py_ssize_t size; } record_fields[RECORD_FIELDS] = {
    {"start", sizeof(double)}, {"duration", sizeof(double)}, {"bytes", sizeof(uint64_t)},
    {"pid", sizeof(uint32_t)}, {"status", sizeof(uint16_t)},
    {"method", 0}, {"route", 0}, {"request_id", 0}, {"tenant", 0}};  /* 0: a text, of any width */
#define TEXT_FIELDS (RECORD_FIELDS - F_METHOD)  /* method, route, request id, tenant: the last ones */
static Py_ssize_t rec_off[RECORD_FIELDS];   /* layout.RECORD_SPANS, relative to the record's start */
static Py_ssize_t rec_size[RECORD_FIELDS];
static Py_ssize_t seq_at = 0;       /* layout.SLOT_SEQ.offset: the sequence word in a ring slot */
static Py_ssize_t payload_at = 0;   /* layout.SLOT_PAYLOAD: where the record starts in a slot */
static Py_ssize_t slot_end = 0;     /* the bytes of a slot in use: past the sequence word and the record */
static int configured = 0;
#define WORD ((Py_ssize_t)sizeof(uint64_t))  /* sequences, heads and counts: stored whole, so aligned */
/* A status entry: (vals, i, hist vals, hist i, bounds, sum_at, code), then optionally the overflow cells. */
#define STATUS_ENTRY_FIELDS 7

static PyObject *str_route_key, *str_tenant_key, *str_request_id_key, *str_default_request_id_key;
static PyObject *str_wsgi_key, *str_method_key, *str_path_key, *str_socket_key, *str_other, *str_500;
static PyObject *str_status, *str_route, *str_combination, *str_bucket;
static PyObject *empty_str, *str_slash, *str_unmatched, *str_env, *str_req;

/* The recorder's state the C path uses: set by WorkloadRecorder.bind() through bind(). */
static PyObject *bound_slab = NULL;      /* a Slab, or NULL */
static PyObject *recorder = NULL;        /* the WorkloadRecorder (slow paths) */
static PyObject *combinations = NULL;    /* its dict (route, status class, tenant) -> combination tuple */
static PyObject *on_idle = NULL;         /* callable or NULL */

static double monotonic_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* 1 when a memoryview still reaches its memory, as C-contiguous items: neither it nor its exporter's
 * buffer was released (a released view keeps its old pointer). Read from the view's own flags, as
 * memoryview does: the public way, taking a Py_buffer of the view for every cell, costs more than the
 * rest of a cell's update; it is the fallback where those flags are not declared. */
static int view_usable(PyObject *view) {
#if defined(_Py_MEMORYVIEW_RELEASED) && defined(_Py_MEMORYVIEW_C) && defined(_Py_MANAGED_BUFFER_RELEASED)
    PyMemoryViewObject *mv = (PyMemoryViewObject *)view;
    return (mv->flags & (_Py_MEMORYVIEW_RELEASED | _Py_MEMORYVIEW_C)) == _Py_MEMORYVIEW_C
           && !(mv->mbuf->flags & _Py_MANAGED_BUFFER_RELEASED);
#else
    Py_buffer probe;  /* refused for a released view, and for a view that is not C-contiguous */
    if (PyObject_GetBuffer(view, &probe, PyBUF_WRITABLE) < 0) {
        PyErr_Clear();
        return 0;
    }
    PyBuffer_Release(&probe);
    return 1;
#endif
}

/* A float64 cell: element i of a memoryview of "d"; its address, or NULL with an exception. */
static double *cell_at(PyObject *view, Py_ssize_t i) {
    if (!PyMemoryView_Check(view)) {
        PyErr_SetString(PyExc_TypeError, "a cell's view must be a memoryview");
        return NULL;
    }
    Py_buffer *b = PyMemoryView_GET_BUFFER(view);
    if (view_usable(view) && !b->readonly && b->itemsize == sizeof(double) && i >= 0
        && i < b->len / (Py_ssize_t)sizeof(double))
        return (double *)b->buf + i;
    PyErr_SetString(PyExc_ValueError, view_usable(view)
                    ? "cell outside its view (or a read-only view, or not of float64 items)"
                    : "a cell's view was released (or is not contiguous)");
    return NULL;
}

static double *cell(PyObject *view, PyObject *index, Py_ssize_t offset) {
    Py_ssize_t i = PyLong_AsSsize_t(index);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    return cell_at(view, i + offset);
}

/* Add amount to the cells of a tuple (view, index, view, index, ...), each moved by offset. */
static int add_cells_at(PyObject *cells, double amount, Py_ssize_t offset) {
    if (!PyTuple_Check(cells)) {
        PyErr_SetString(PyExc_TypeError, "cells must be a tuple");
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(cells);
    for (Py_ssize_t k = 0; k + 1 < n; k += 2) {
        double *c = cell(PyTuple_GET_ITEM(cells, k), PyTuple_GET_ITEM(cells, k + 1), offset);
        if (c == NULL)
            return -1;
        *c += amount;
    }
    return 0;
}

static int add_cells(PyObject *cells, double amount) { return add_cells_at(cells, amount, 0); }

/* A request in a sketch bucket: entry is (shifted, fixed), as workload._Combination describes; the
 * cells of shifted are moved by the bucket's offset in its block. None (no cells) adds nothing. */
static int add_bucket(PyObject *entry, Py_ssize_t offset) {
    if (entry == Py_None)
        return 0;
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 2) {
        PyErr_SetString(PyExc_TypeError, "a bucket entry must be (shifted cells, fixed cells)");
        return -1;
    }
    if (add_cells_at(PyTuple_GET_ITEM(entry, 0), 1.0, offset) < 0)
        return -1;
    return add_cells(PyTuple_GET_ITEM(entry, 1), 1.0);
}

/* src (UTF-8) into a field of size bytes, zero-padded; a longer text is cut on a character boundary, as
 * segment.ring.fit() cuts it. */
static void put_text(char *dst, Py_ssize_t size, const char *src, Py_ssize_t len) {
    if (len > size) {
        len = size;
        while (len > 0 && ((unsigned char)src[len] & 0xC0) == 0x80)  /* src[len]: inside a character */
            len--;
    }
    memcpy(dst, src, len);
    memset(dst + len, 0, size - len);
}

/* UTF-8 of a str or the bytes of a bytes object. A str UTF-8 cannot carry (lone surrogates) is encoded
 * with '?' for them, as str.encode("utf-8", "replace") does: then *owner holds the encoded bytes, to be
 * released after use (NULL otherwise). */
static const char *text_of(PyObject *o, Py_ssize_t *len, PyObject **owner) {
    *owner = NULL;
    if (PyBytes_Check(o)) {
        *len = PyBytes_GET_SIZE(o);
        return PyBytes_AS_STRING(o);
    }
    if (!PyUnicode_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "expected str or bytes");
        return NULL;
    }
    const char *utf8 = PyUnicode_AsUTF8AndSize(o, len);
    if (utf8 != NULL || !PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
        return utf8;
    PyErr_Clear();
    *owner = PyUnicode_AsEncodedString(o, "utf-8", "replace");
    if (*owner == NULL)
        return NULL;
    *len = PyBytes_GET_SIZE(*owner);
    return PyBytes_AS_STRING(*owner);
}

/* ---------------------------------------------------------------- Slab */
typedef struct {
    Py_ssize_t first, slots, slot_size, head_at;                      /* the record ring */
    Py_ssize_t started_at, count_at, text_at, method_size, path_size;  /* the in-flight fields */
} SlabGeometry;

typedef struct {
    PyObject_HEAD
    Py_buffer buf;
    int has_buf;     /* 0 until __init__ succeeded; from then on buf and g are checked and consistent */
    SlabGeometry g;  /* byte offsets in buf */
    uint64_t index;
    uint32_t pid;
} Slab;

static void slab_dealloc(Slab *self) {
    if (self->has_buf)
        PyBuffer_Release(&self->buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* [at, at + size) lies within len bytes (computed without overflow). */
static int within(Py_ssize_t at, Py_ssize_t size, Py_ssize_t len) {
    return at >= 0 && size >= 0 && at <= len && size <= len - at;
}

/* Why a slab of this geometry cannot be written in len bytes at an 8-byte aligned address; NULL if it can. */
static const char *geometry_fault(const SlabGeometry *g, Py_ssize_t len) {
    if (g->slots < 0 || g->method_size < 0 || g->path_size < 0)
        return "slots, method_size and path_size must be >= 0";
    if (g->slot_size < slot_end || g->slot_size % WORD)
        return "slot_size must be a multiple of 8 that holds the sequence word and a record";
    if (g->first % WORD || g->head_at % WORD || g->started_at % WORD || g->count_at % WORD)
        return "first_slot, head_at, started_at and count_at must be multiples of 8";
    if (g->slots > PY_SSIZE_T_MAX / g->slot_size || !within(g->first, g->slots * g->slot_size, len))
        return "the record ring does not fit in the buffer";
    if (!within(g->head_at, WORD, len) || !within(g->started_at, sizeof(double), len)
        || !within(g->count_at, WORD, len))
        return "head_at, started_at or count_at is outside the buffer";
    if (g->method_size > PY_SSIZE_T_MAX - g->path_size || !within(g->text_at, g->method_size + g->path_size, len))
        return "the in-flight method and path do not fit in the buffer";
    return NULL;
}

/* Slab(buf, first_slot, slots, slot_size, head_at, index, started_at, count_at, text_at, method_size,
 *      path_size, pid): all byte offsets in buf. Everything is checked before anything is stored, so a
 * refused __init__ leaves the slab as it was (a bound slab keeps writing where it wrote). */
static int slab_init(Slab *self, PyObject *args, PyObject *kw) {
    PyObject *obj;
    SlabGeometry g;
    unsigned long long index;
    unsigned int pid;
    Py_buffer buf;
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "call configure() first (rockstar_mp.worker.accelerator does)");
        return -1;
    }
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "Slab() takes positional arguments only");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "OnnnnKnnnnnI:Slab", &obj, &g.first, &g.slots, &g.slot_size, &g.head_at, &index,
                          &g.started_at, &g.count_at, &g.text_at, &g.method_size, &g.path_size, &pid))
        return -1;
    if (PyObject_GetBuffer(obj, &buf, PyBUF_WRITABLE) < 0)
        return -1;
    const char *fault = (uintptr_t)buf.buf % WORD ? "the buffer must start on an 8-byte boundary"
                                               : geometry_fault(&g, buf.len);
    if (fault != NULL) {
        PyBuffer_Release(&buf);
        PyErr_Format(PyExc_ValueError, "Slab(): %s", fault);
        return -1;
    }
    Py_buffer old = self->buf;
    int had_buf = self->has_buf;
    self->buf = buf;
    self->has_buf = 1;
    self->g = g;
    self->index = index;
    self->pid = pid;
    if (had_buf)  /* last: releasing may run code that uses this slab */
        PyBuffer_Release(&old);
    return 0;
}

/* 1, or 0 with TypeError for a Slab whose __init__ never succeeded (Slab.__new__(Slab)). */
static int slab_ready(PyObject *slab) {
    if (((Slab *)slab)->has_buf)
        return 1;
    PyErr_SetString(PyExc_TypeError,
                    "this Slab was never initialised: create it as Slab(buf, first_slot, slots, ...)");
    return 0;
}

static char *slab_at(Slab *self, Py_ssize_t at) { return (char *)self->buf.buf + at; }

static void slab_begin(Slab *self, PyObject *method, PyObject *path) {
    Py_ssize_t mlen = 0, plen = 0;
    PyObject *mowner = NULL, *powner = NULL;
    const char *m = text_of(method, &mlen, &mowner);
    const char *p = m ? text_of(path, &plen, &powner) : NULL;
    if (m == NULL || p == NULL) {
        PyErr_Clear();  /* display fields only */
        m = p = "";
        mlen = plen = 0;
    }
    put_text(slab_at(self, self->g.text_at), self->g.method_size, m, mlen);
    put_text(slab_at(self, self->g.text_at + self->g.method_size), self->g.path_size, p, plen);
    Py_XDECREF(mowner);
    Py_XDECREF(powner);
    double now = wall_now();
    memcpy(slab_at(self, self->g.started_at), &now, sizeof now);
    uint64_t *count = (uint64_t *)slab_at(self, self->g.count_at);
    __atomic_store_n(count, *count + 1, __ATOMIC_RELEASE);
}

/* Returns 1 when no request is in flight any more. */
static int slab_end(Slab *self) {
    uint64_t *count = (uint64_t *)slab_at(self, self->g.count_at);
    uint64_t n = *count;
    n = n ? n - 1 : 0;
    __atomic_store_n(count, n, __ATOMIC_RELEASE);
    if (n == 0) {
        double zero = 0.0;
        memcpy(slab_at(self, self->g.started_at), &zero, sizeof zero);
        return 1;
    }
    return 0;
}

/* One record: (start, duration, bytes, pid, status, method, route, request id, tenant). */
static int slab_append(Slab *self, double start, double seconds, uint64_t nbytes, uint32_t status,
                       PyObject *method, PyObject *route, PyObject *request_id, PyObject *tenant) {
    if (self->g.slots <= 0)
        return 0;
    PyObject *texts[TEXT_FIELDS] = {method, route, request_id, tenant};
    PyObject *owners[TEXT_FIELDS] = {NULL};
    const char *raw[TEXT_FIELDS];
    Py_ssize_t len[TEXT_FIELDS];
    for (int k = 0; k < TEXT_FIELDS; k++) {
        raw[k] = text_of(texts[k], &len[k], &owners[k]);
        if (raw[k] == NULL) {
            for (int j = 0; j < k; j++)
                Py_XDECREF(owners[j]);
            return -1;
        }
    }
    uint64_t index = self->index;
    Py_ssize_t slot_at = self->g.first + (Py_ssize_t)(index % (uint64_t)self->g.slots) * self->g.slot_size;
    char *slot = slab_at(self, slot_at);
    uint64_t *seq = (uint64_t *)(slot + seq_at);
    __atomic_store_n(seq, 0, __ATOMIC_RELEASE);  /* a reader that sees 0 skips the slot */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    char *payload = slot + payload_at;
    uint16_t status16 = (uint16_t)status;
    memcpy(payload + rec_off[F_START], &start, sizeof start);
    memcpy(payload + rec_off[F_DURATION], &seconds, sizeof seconds);
    memcpy(payload + rec_off[F_BYTES], &nbytes, sizeof nbytes);
    memcpy(payload + rec_off[F_PID], &self->pid, sizeof self->pid);
    memcpy(payload + rec_off[F_STATUS], &status16, sizeof status16);
    for (int k = 0; k < TEXT_FIELDS; k++) {
        put_text(payload + rec_off[F_METHOD + k], rec_size[F_METHOD + k], raw[k], len[k]);
        Py_XDECREF(owners[k]);
    }
    __atomic_store_n(seq, index + 1, __ATOMIC_RELEASE);
    self->index = index + 1;
    __atomic_store_n((uint64_t *)slab_at(self, self->g.head_at), index + 1, __ATOMIC_RELEASE);
    return 0;
}

static PyObject *slab_py_begin(Slab *self, PyObject *const *args, Py_ssize_t n) {
    if (!slab_ready((PyObject *)self))
        return NULL;
    if (n != 2) {
        PyErr_SetString(PyExc_TypeError, "begin(method, path)");
        return NULL;
    }
    slab_begin(self, args[0], args[1]);
    Py_RETURN_NONE;
}

static PyObject *slab_py_end(Slab *self, PyObject *unused) {
    if (!slab_ready((PyObject *)self))
        return NULL;
    return PyBool_FromLong(slab_end(self));
}

static PyMethodDef slab_methods[] = {
    {"begin", (PyCFunction)(void (*)(void))slab_py_begin, METH_FASTCALL, "A request started."},
    {"end", (PyCFunction)slab_py_end, METH_NOARGS, "A request ended; True when none is in flight."},
    {NULL}};

static PyTypeObject SlabType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rockstar_mp._hotpath.Slab",
    .tp_basicsize = sizeof(Slab),
    .tp_dealloc = (destructor)slab_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A worker's slab as the request path writes it: the record ring and the in-flight fields.",
    .tp_methods = slab_methods,
    .tp_init = (initproc)slab_init,
    .tp_new = PyType_GenericNew,
};

/* ---------------------------------------------------------------- the workload record */
/* Bumped whenever the series move (forget_cells(), bind()): addresses resolved before are not used again. */
static unsigned long cells_epoch = 1;

/* The cells of a tuple (view, index, ...) resolved to their addresses, for the object they were found in
 * (held: while it lives, nothing else takes its address): record() adds to the last combination's sums
 * and the last bucket entry's cells through them, without the views' and ints' checks and cache lines. */
#define RESOLVED_CELLS 6
typedef struct {
    PyObject *of;
    unsigned long epoch;
    Py_ssize_t n;
    double *at[RESOLVED_CELLS];
} CellAddresses;

static CellAddresses combination_sums, bucket_shifted, bucket_fixed;

static int addresses_of(const CellAddresses *a, PyObject *of) { return a->of == of && a->epoch == cells_epoch; }

/* Resolve cells (as add_cells_at reads them), each with room for span items from its index, for of; an
 * address that cannot be resolved (a released view, a cell out of its view, too many cells) leaves a
 * empty and its cells to add_cells_at. No exception either way. */
static void resolve_addresses(CellAddresses *a, PyObject *of, PyObject *cells, Py_ssize_t span) {
    Py_CLEAR(a->of);
    if (!PyTuple_Check(cells) || PyTuple_GET_SIZE(cells) / 2 > RESOLVED_CELLS)
        return;
    Py_ssize_t n = PyTuple_GET_SIZE(cells) / 2;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *view = PyTuple_GET_ITEM(cells, 2 * k), *index = PyTuple_GET_ITEM(cells, 2 * k + 1);
        double *first = cell(view, index, 0);
        if (first == NULL || cell(view, index, span - 1) == NULL) {
            PyErr_Clear();
            return;
        }
        a->at[k] = first;
    }
    a->n = n;
    a->epoch = cells_epoch;
    a->of = Py_NewRef(of);
}

static void add_at_addresses(const CellAddresses *a, Py_ssize_t offset, double amount) {
    for (Py_ssize_t k = 0; k < a->n; k++)
        a->at[k][offset] += amount;
}

/* The combination record() found last, and what found it: the next request of the same route object, status
 * class and tenant object (a framework's template and the "" tenant are the same objects request after
 * request) takes it without a key tuple or a lookup. Held, so that no other object takes their addresses;
 * bind() forgets them (a new dict of combinations). */
static PyObject *last_route = NULL, *last_tenant = NULL, *last_combination = NULL;
static long last_status_class = -1;
/* The bucket entry record() found last in a combination's blocks dict, and its block number: a dict's
 * entry is set once and never replaced, and requests of a route mostly fall in one block. */
static PyObject *last_blocks = NULL, *last_block_entry = NULL;
static long last_block_number = 0;

static void forget_last_combination(void) {
    Py_CLEAR(last_route);
    Py_CLEAR(last_tenant);
    Py_CLEAR(last_combination);
    last_status_class = -1;
    Py_CLEAR(last_blocks);
    Py_CLEAR(last_block_entry);
    Py_CLEAR(combination_sums.of);
    Py_CLEAR(bucket_shifted.of);
    Py_CLEAR(bucket_fixed.of);
}

/* The entry of block number in blocks: a new reference, or NULL (an exception set, or none when the
 * dict holds no such block). */
static PyObject *block_entry(PyObject *blocks, long number) {
    if (blocks == last_blocks && number == last_block_number)
        return Py_NewRef(last_block_entry);
    if (!PyDict_CheckExact(blocks))
        return NULL;
    PyObject *key = PyLong_FromLong(number);
    if (key == NULL)
        return NULL;
    PyObject *entry = PyDict_GetItemWithError(blocks, key);  /* borrowed */
    Py_DECREF(key);
    if (entry == NULL)
        return NULL;
    Py_XSETREF(last_blocks, Py_NewRef(blocks));
    Py_XSETREF(last_block_entry, Py_NewRef(entry));
    last_block_number = number;
    return Py_NewRef(entry);
}

/* Two exact strs of the same text (by their bytes: no rich comparison). */
static int equal_strs(PyObject *a, PyObject *b) {
    return a == b || (PyUnicode_GET_LENGTH(a) == PyUnicode_GET_LENGTH(b) && PyUnicode_KIND(a) == PyUnicode_KIND(b)
                      && !memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), PyUnicode_GET_LENGTH(a) * PyUnicode_KIND(a)));
}

/* The combination of (route, status class, tenant): a new reference, or NULL with an exception. A tenant
 * header's value is a new str every request, so the last tenant is compared by its text. */
static PyObject *combination_of(PyObject *route, long status_class, PyObject *tenant) {
    if (route == last_route && status_class == last_status_class && last_tenant != NULL
        && (tenant == last_tenant
            || (PyUnicode_CheckExact(tenant) && PyUnicode_CheckExact(last_tenant) && equal_strs(tenant, last_tenant))))
        return Py_NewRef(last_combination);
    PyObject *klass = PyLong_FromLong(status_class);
    if (klass == NULL)
        return NULL;
    PyObject *key = PyTuple_Pack(3, route, klass, tenant);
    if (key == NULL) {
        Py_DECREF(klass);
        return NULL;
    }
    PyObject *combination = PyDict_GetItemWithError(combinations, key);  /* borrowed */
    Py_DECREF(key);
    if (combination != NULL) {  /* one the dict holds: kept for the next request */
        Py_INCREF(combination);
        Py_XSETREF(last_route, Py_NewRef(route));
        Py_XSETREF(last_tenant, Py_NewRef(tenant));
        Py_XSETREF(last_combination, Py_NewRef(combination));
        last_status_class = status_class;
    } else if (!PyErr_Occurred())
        combination = PyObject_CallMethodObjArgs(recorder, str_combination, route, klass, tenant, NULL);
    Py_DECREF(klass);
    return combination;
}

/* The sketch cells and the ring, as WorkloadRecorder.record does. Returns 0, or -1 with an exception. */
static int record(PyObject *method, PyObject *route, long status, double seconds, double start,
                  uint64_t nbytes, PyObject *request_id, PyObject *tenant) {
    if (combinations == NULL || recorder == NULL)
        return 0;
    PyObject *combination = combination_of(route, status / 100, tenant);
    if (combination == NULL)
        return -1;
    PyObject *route_raw = route, *tenant_raw = tenant;
    int rc = 0;
    /* combination: (blocks dict, sums cells, route bytes, tenant bytes, ...) or None */
    if (PyTuple_Check(combination) && PyTuple_GET_SIZE(combination) >= 4) {
        PyObject *blocks = PyTuple_GET_ITEM(combination, 0);
        double s = seconds > min_seconds ? seconds : min_seconds;
        double bucket = ceil(log(s) * bucket_scale - 1e-9);
        if (!(bucket > (double)LONG_MIN && bucket < (double)LONG_MAX)) {  /* seconds = inf: math.ceil raises */
            Py_DECREF(combination);
            PyErr_SetString(PyExc_OverflowError, "no sketch bucket for this duration (seconds = inf?)");
            return -1;
        }
        long index = (long)bucket, offset = index % block_width;
        if (offset < 0)
            offset += block_width;  /* floored, as Python's index % BUCKETS_PER_BLOCK */
        PyObject *entry = block_entry(blocks, (index - offset) / block_width);
        if (entry == NULL && !PyErr_Occurred()) {
            PyObject *pyindex = PyLong_FromLong(index);
            entry = pyindex == NULL ? NULL
                                    : PyObject_CallMethodObjArgs(recorder, str_bucket, combination, pyindex, NULL);
            Py_XDECREF(pyindex);
        }
        if (entry == NULL)
            rc = -1;
        else if (addresses_of(&bucket_shifted, entry) && addresses_of(&bucket_fixed, entry)) {
            add_at_addresses(&bucket_shifted, offset, 1.0);
            add_at_addresses(&bucket_fixed, 0, 1.0);
            Py_DECREF(entry);
        } else {
            rc = add_bucket(entry, offset);
            if (rc == 0 && PyTuple_Check(entry) && PyTuple_GET_SIZE(entry) == 2) {
                resolve_addresses(&bucket_shifted, entry, PyTuple_GET_ITEM(entry, 0), block_width);
                resolve_addresses(&bucket_fixed, entry, PyTuple_GET_ITEM(entry, 1), 1);
            }
            Py_DECREF(entry);
        }
        PyObject *sums = PyTuple_GET_ITEM(combination, 1);
        if (rc == 0 && addresses_of(&combination_sums, combination))
            add_at_addresses(&combination_sums, 0, seconds);
        else if (rc == 0 && (rc = add_cells(sums, seconds)) == 0)
            resolve_addresses(&combination_sums, combination, sums, 1);
        route_raw = PyTuple_GET_ITEM(combination, 2);
        tenant_raw = PyTuple_GET_ITEM(combination, 3);
    }
    if (rc == 0 && bound_slab != NULL)
        rc = slab_append((Slab *)bound_slab, start, seconds, nbytes, (uint32_t)status, method, route_raw,
                         request_id, tenant_raw);
    Py_DECREF(combination);
    return rc;
}

/* record(method, route, status, seconds, start, bytes, request_id, tenant): the C version of
 * WorkloadRecorder.record (method, route and tenant already cut to fit; request id "" for none). */
static PyObject *py_record(PyObject *module, PyObject *args) {
    PyObject *method, *route, *request_id, *tenant;
    long status;
    double seconds, start;
    unsigned long long nbytes;
    if (!PyArg_ParseTuple(args, "OOlddKOO", &method, &route, &status, &seconds, &start, &nbytes, &request_id,
                          &tenant))
        return NULL;
    if (record(method, route, status, seconds, start, nbytes, request_id, tenant) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* {name: name} for a frozenset of known methods: a request's method is looked up in it, and the request
 * then holds the dict's str, the same object for every request of that method (find_resolved's key). */
static PyObject *method_names(PyObject *methods) {
    PyObject *names = PyDict_New();
    PyObject *it = names ? PyObject_GetIter(methods) : NULL;
    PyObject *name;
    while (it != NULL && (name = PyIter_Next(it)) != NULL) {
        int rc = PyDict_SetItem(names, name, name);
        Py_DECREF(name);
        if (rc < 0)
            break;
    }
    Py_XDECREF(it);
    if (PyErr_Occurred())
        Py_CLEAR(names);
    return names;
}

/* ---------------------------------------------------------------- the middleware */
typedef struct {
    PyObject_HEAD
    PyObject *app;
    PyObject *statuses;      /* dict (method, status line, route) -> (vals, i, hist vals, hist i, bounds, sum_at,
                                code[, overflow cells]): wsgi.response_cells' cache */
    PyObject *routes;        /* dict raw path -> route template: wsgi.path_template's cache */
    PyObject *methods;       /* dict of known methods, each its own value (method_names) */
    PyObject *tenant_key;    /* environ key of the tenant header */
    int workload, hold;
} Middleware;

typedef struct {
    PyObject_HEAD
    Middleware *owner;
    PyObject *environ;
    PyObject *server_start_response;
    PyObject *method;
    PyObject *status;        /* status line, or NULL */
    PyObject *body;          /* the app's iterable */
    PyObject *iterator;      /* iter(body) once iteration began */
    PyObject *sock;          /* held socket, or NULL */
    double started;
    uint64_t nbytes;
    int finished;
} Request;

static PyTypeObject RequestType;

static int finish(Request *req);

static void request_dealloc(Request *self) {
    PyObject_GC_UnTrack(self);
    if (!self->finished && self->owner != NULL && self->owner->workload && bound_slab != NULL)
        slab_end((Slab *)bound_slab);  /* dropped unfinished (no close(), not exhausted): not in flight */
    Py_XDECREF(self->owner);
    Py_XDECREF(self->environ);
    Py_XDECREF(self->server_start_response);
    Py_XDECREF(self->method);
    Py_XDECREF(self->status);
    Py_XDECREF(self->body);
    Py_XDECREF(self->iterator);
    Py_XDECREF(self->sock);
    PyObject_GC_Del(self);
}

static int request_traverse(Request *self, visitproc visit, void *arg) {
    Py_VISIT(self->owner);
    Py_VISIT(self->environ);
    Py_VISIT(self->server_start_response);
    Py_VISIT(self->body);
    Py_VISIT(self->iterator);
    Py_VISIT(self->sock);
    return 0;
}

static int request_clear(Request *self) {
    Py_CLEAR(self->environ);
    Py_CLEAR(self->server_start_response);
    Py_CLEAR(self->body);
    Py_CLEAR(self->iterator);
    Py_CLEAR(self->sock);
    return 0;
}

/* start_response(status, headers, exc_info=None), handed to the app */
static PyObject *request_call(Request *self, PyObject *args, PyObject *kw) {
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    if ((kw != NULL && PyDict_GET_SIZE(kw)) || n < 2 || n > 3) {  /* rare: the general form */
        PyObject *status, *headers, *exc_info = Py_None;
        static char *names[] = {"status", "headers", "exc_info", NULL};
        if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O", names, &status, &headers, &exc_info))
            return NULL;
        Py_INCREF(status);
        Py_XSETREF(self->status, status);
        return PyObject_CallFunctionObjArgs(self->server_start_response, status, headers, exc_info, NULL);
    }
    PyObject *status = PyTuple_GET_ITEM(args, 0);
    Py_INCREF(status);
    Py_XSETREF(self->status, status);
    return PyObject_Call(self->server_start_response, args, NULL);  /* the same arguments, as given */
}

static int start_iteration(Request *self) {
    if (self->body == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the response body is gone");
        return -1;
    }
    if (self->body == (PyObject *)self) {  /* iter() of itself would recurse until the C stack ends */
        PyErr_SetString(PyExc_TypeError, "the app returned its start_response as the response body");
        return -1;
    }
    if (Py_EnterRecursiveCall(" while starting a response body"))  /* a longer loop of requests' bodies */
        return -1;
    self->iterator = PyObject_GetIter(self->body);
    Py_LeaveRecursiveCall();
    return self->iterator ? 0 : -1;
}

static PyObject *request_iter(Request *self) {
    if (self->iterator == NULL && start_iteration(self) < 0)
        return NULL;
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *request_next(Request *self) {
    if (self->iterator == NULL && start_iteration(self) < 0)
        return NULL;
    PyObject *chunk = PyIter_Next(self->iterator);
    if (chunk != NULL) {
        if (PyBytes_Check(chunk))
            self->nbytes += (uint64_t)PyBytes_GET_SIZE(chunk);
        return chunk;
    }
    if (!PyErr_Occurred())
        finish(self);  /* exhausted: the server wrote the last chunk (still corked): count now */
    return NULL;
}

/* close(): the server is done with the response (WSGI servers call it after the last byte); counts if
 * the iteration did not (HEAD, a client gone mid-body, a server that does not exhaust the body). */
static PyObject *request_close(Request *self, PyObject *unused) {
    PyObject *body = self->body;
    int failed = 0;
    if (body != NULL && !PyList_CheckExact(body)) {
        PyObject *r = PyObject_CallMethod(body, "close", NULL);
        if (r == NULL) {
            if (PyErr_ExceptionMatches(PyExc_AttributeError))
                PyErr_Clear();
            else
                failed = 1;
        }
        Py_XDECREF(r);
    }
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    if (failed)
        PyErr_Fetch(&type, &value, &tb);
    int rc = finish(self);
    if (failed) {
        if (rc < 0)
            PyErr_Clear();
        PyErr_Restore(type, value, tb);
        return NULL;
    }
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef request_methods[] = {
    {"close", (PyCFunction)request_close, METH_NOARGS, "Count the response (the server sent it)."},
    {NULL}};

static PyTypeObject RequestType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rockstar_mp._hotpath.Request",
    .tp_basicsize = sizeof(Request),
    .tp_dealloc = (destructor)request_dealloc,
    .tp_call = (ternaryfunc)request_call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One request in MetricsMiddleware: the app's start_response, then the response body.",
    .tp_traverse = (traverseproc)request_traverse,
    .tp_clear = (inquiry)request_clear,
    .tp_iter = (getiterfunc)request_iter,
    .tp_iternext = (iternextfunc)request_next,
    .tp_methods = request_methods,
};

/* The descriptor of a socket object. The standard socket's C struct starts with its descriptor, an int
 * on Linux (CPython's PySocketSockObject): read there for an instance of socket_base, the type that
 * trust_socket_layout() checked on a real socket, which saves calling its fileno() method (some 600
 * instructions a call, two a request); anything else through fileno(). */
typedef struct {
    PyObject_HEAD
    int fd;
} SocketHead;

static PyTypeObject *socket_base;

static int socket_fd(PyObject *sock) {
    if (socket_base != NULL && PyObject_TypeCheck(sock, socket_base))
        return ((SocketHead *)sock)->fd;
    return PyObject_AsFileDescriptor(sock);
}

/* trust_socket_layout(sock): read the descriptor of instances of sock's type's _socket.socket base from
 * their struct if it holds sock's (an open socket); True if it does. */
static PyObject *py_trust_socket_layout(PyObject *module, PyObject *sock) {
    PyTypeObject *base = Py_TYPE(sock);
    while (base != NULL && strcmp(base->tp_name, "_socket.socket") != 0)
        base = base->tp_base;
    int fd = PyObject_AsFileDescriptor(sock);
    if (fd < 0)
        return NULL;
    if (base == NULL || base->tp_basicsize < (Py_ssize_t)sizeof(SocketHead) || ((SocketHead *)sock)->fd != fd)
        Py_RETURN_FALSE;
    Py_INCREF(base);
    Py_XSETREF(socket_base, base);
    Py_RETURN_TRUE;
}

/* on (1): SO_LINGER 0, then TCP_CORK, both or -1; off (0): both released, whatever the first did. */
static int set_hold(int fd, int on) {
#ifdef TCP_CORK
    struct linger linger = {on, 0};
    if (on)
        return setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, sizeof linger) == 0
               && setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof on) == 0 ? 0 : -1;
    int lingered = setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, sizeof linger);
    int flushed = setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof on);
    return lingered == 0 && flushed == 0 ? 0 : -1;
#else
    return -1;
#endif
}

/* worker/hold.py's hold (1) and release (0) on the server's socket object, without a call into Python:
 * 0, or -1 (no such option, not a socket). */
static int set_cork(PyObject *sock, int on) {
    int fd = socket_fd(sock);
    return fd < 0 ? -1 : set_hold(fd, on);
}

/* The listeners' hold of a gunicorn sync worker (hold_listeners()): SO_LINGER 0 and TCP_CORK set once
 * on the listening sockets, which every connection accepted afterwards inherits, so that a request costs
 * two system calls (the release once counted) instead of four. Gunicorn's sync worker answers one
 * connection at a time and ends it with a shutdown(SHUT_WR), which sends what a cork held: a response
 * gunicorn writes itself (a 400) goes out that way. Set at the first held request, whose own connection
 * was accepted before and is held as any other. */
static int *listener_fds = NULL;
static int n_listeners = 0;     /* the listeners to hold at the first held request; 0 once done or failed */
static int listeners_held = 0;  /* 1 once every listener holds: connections accepted from now on are held */

/* Hold every listener, or none (a listener that refuses, e.g. a UNIX socket's TCP_CORK, undoes the
 * others: its connections would not be held). */
static void hold_the_listeners(void) {
    int k = 0;
    while (k < n_listeners && set_hold(listener_fds[k], 1) == 0)
        k++;
    if (k == n_listeners)
        listeners_held = 1;
    else
        while (k-- > 0)
            set_hold(listener_fds[k], 0);
    n_listeners = 0;
}

/* hold_listeners(fds): the listening sockets this (gunicorn sync) worker accepts from, to be held at its
 * first held request; () forgets them and holds connections one by one again. */
static PyObject *py_hold_listeners(PyObject *module, PyObject *fds) {
    PyObject *seq = PySequence_Fast(fds, "hold_listeners() takes a sequence of descriptors");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int *taken = n > 0 ? PyMem_New(int, (size_t)n) : NULL;
    if (n > 0 && taken == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        long fd = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, k));
        if ((fd == -1 && PyErr_Occurred()) || fd < 0 || fd > INT_MAX) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "not a descriptor: %ld", fd);
            PyMem_Free(taken);
            Py_DECREF(seq);
            return NULL;
        }
        taken[k] = (int)fd;
    }
    Py_DECREF(seq);
    PyMem_Free(listener_fds);
    listener_fds = taken;
    n_listeners = (int)n;
    listeners_held = 0;
    Py_RETURN_NONE;
}

/* listeners_held(): True once the listeners hold (connections accepted since cost two calls a request). */
static PyObject *py_listeners_held(PyObject *module, PyObject *unused) {
    return PyBool_FromLong(listeners_held);
}

/* (vals, i, hist vals, hist i, bounds, sum_at, code[, overflow cells or None]) for the request's method,
 * status line and route (wsgi.response_cells) */
static PyObject *status_entry(Middleware *mw, PyObject *method, PyObject *status, PyObject *route, int *cached) {
    PyObject *key = PyTuple_Pack(3, method, status, route);
    if (key == NULL)
        return NULL;
    PyObject *entry = PyDict_GetItemWithError(mw->statuses, key);
    Py_XINCREF(entry);
    Py_DECREF(key);
    *cached = entry != NULL;
    if (entry == NULL && PyErr_ExceptionMatches(PyExc_TypeError))
        PyErr_Clear();  /* a status "line" that cannot be a key: asked every time, as in the Python path */
    if (entry == NULL && !PyErr_Occurred())
        entry = PyObject_CallMethodObjArgs((PyObject *)mw, str_status, method, status, route, NULL);
    if (entry != NULL && (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) < STATUS_ENTRY_FIELDS
                          || PyTuple_GET_SIZE(entry) > STATUS_ENTRY_FIELDS + 1)) {
        Py_DECREF(entry);
        PyErr_SetString(PyExc_TypeError, "_status() must return a 7- or 8-tuple");
        return NULL;
    }
    return entry;
}

/* The histogram bounds bisected last, as doubles: the status entries of a family share one tuple of
 * bounds (the request duration's), so a request reads a small array instead of the tuple's floats. */
static PyObject *cached_bounds = NULL;  /* the tuple, held (a tuple of floats never changes) */
static double *cached_bound_values = NULL;
static Py_ssize_t cached_bound_room = 0;

/* The bounds tuple's values, or NULL (no exception) when they are not all floats (or no memory): the
 * caller then converts them one by one, raising where bisect_left would. */
static const double *bound_values(PyObject *bounds) {
    if (bounds == cached_bounds)
        return cached_bound_values;
    Py_ssize_t n = PyTuple_GET_SIZE(bounds);
    for (Py_ssize_t k = 0; k < n; k++)
        if (!PyFloat_CheckExact(PyTuple_GET_ITEM(bounds, k)))
            return NULL;  /* checked before the array is written: it may be the cached tuple's still */
    if (n > cached_bound_room) {
        double *grown = PyMem_Realloc(cached_bound_values, (size_t)n * sizeof(double));
        if (grown == NULL)
            return NULL;
        cached_bound_values = grown;
        cached_bound_room = n;
    }
    for (Py_ssize_t k = 0; k < n; k++)
        cached_bound_values[k] = PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(bounds, k));
    Py_XSETREF(cached_bounds, Py_NewRef(bounds));
    return cached_bound_values;
}

/* http.requests + 1 and the duration histogram, from a status entry */
static int count_and_observe(PyObject *entry, double seconds) {
    double *count = cell(PyTuple_GET_ITEM(entry, 0), PyTuple_GET_ITEM(entry, 1), 0);
    if (count == NULL)
        return -1;
    *count += 1.0;
    PyObject *overflow = PyTuple_GET_SIZE(entry) > STATUS_ENTRY_FIELDS
                         ? PyTuple_GET_ITEM(entry, STATUS_ENTRY_FIELDS) : Py_None;
    if (overflow != Py_None && add_cells(overflow, 1.0) < 0)  /* counted under the fallback series */
        return -1;
    PyObject *vals = PyTuple_GET_ITEM(entry, 2), *bounds = PyTuple_GET_ITEM(entry, 4);
    Py_ssize_t base = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 3));
    Py_ssize_t sum_at = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 5));
    if ((base == -1 || sum_at == -1) && PyErr_Occurred())
        return -1;
    if (!PyTuple_Check(bounds)) {
        PyErr_SetString(PyExc_TypeError, "histogram bounds must be a tuple");
        return -1;
    }
    Py_ssize_t lo = 0, hi = PyTuple_GET_SIZE(bounds);
    const double *values = bound_values(bounds);
    while (lo < hi) {  /* bisect_left: the first bound >= seconds */
        Py_ssize_t mid = (lo + hi) / 2;
        double bound = values != NULL ? values[mid] : PyFloat_AsDouble(PyTuple_GET_ITEM(bounds, mid));
        if (bound == -1.0 && values == NULL && PyErr_Occurred())
            return -1;  /* before the bucket and the sum, as bisect_left raises in the Python path */
        if (bound < seconds)
            lo = mid + 1;
        else
            hi = mid;
    }
    double *bucket = cell_at(vals, base + lo);
    double *sum = bucket ? cell_at(vals, base + sum_at) : NULL;
    if (sum == NULL)
        return -1;
    *bucket += 1.0;
    *sum += seconds;
    return 0;
}

/* -- resolved status entries ---------------------------------------------------------------------
 * A status entry's cells resolved to their addresses once, in a small table keyed by (cache, method,
 * route, status line): a request whose method and route are the objects of an earlier one (a known
 * method's canonical str, a framework's template) and whose status line has the same text counts with
 * three stores, without a key tuple, a dict lookup, or the entry's views and ints. In a server the
 * request path runs with cold caches (other processes and the kernel ran since the last request):
 * what it costs there is mostly the cache lines it touches, code and data.
 * The addresses stay valid while the entry is held and the series do not move: every move (attach,
 * fork, detach) empties the caches (CellCache.clear, bind()), which calls forget_cells() here. */
#define RESOLVED_SLOTS 64
typedef struct {
    PyObject *cache, *method, *route, *status, *entry;  /* held; entry keeps its views alive */
    double *count, *buckets, *sum;
    PyObject *bounds, *overflow;                          /* borrowed from entry; overflow NULL for none */
    long code;
    unsigned long epoch;
} Resolved;
static Resolved resolved[RESOLVED_SLOTS];

static void forget_cells(void) { cells_epoch++; }

static PyObject *py_forget_cells(PyObject *module, PyObject *unused) {
    forget_cells();
    Py_RETURN_NONE;
}

/* A status the table keys: a str status line of three characters or more (WSGI's), or an int (ASGI's);
 * a number for its slot (an int's value, a line's first three characters as one number), or -1 for any
 * other (never resolved). */
static long status_key(PyObject *status) {
    if (PyLong_CheckExact(status)) {
        long code = PyLong_AsLong(status);
        if (code == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            return -1;
        }
        return code < 0 ? -1 : code;
    }
    if (!PyUnicode_CheckExact(status) || PyUnicode_GET_LENGTH(status) < 3
        || PyUnicode_KIND(status) != PyUnicode_1BYTE_KIND)
        return -1;  /* a status line is latin-1 (PEP 3333) */
    const Py_UCS1 *c = PyUnicode_1BYTE_DATA(status);
    return (long)c[0] * 100 + c[1] * 10 + c[2];
}

/* The slot of a key (status_key's number with the cache's, method's and route's addresses), or -1. */
static Py_ssize_t resolved_slot(PyObject *cache, PyObject *method, PyObject *route, long code) {
    if (code < 0 || !PyUnicode_CheckExact(route))
        return -1;
    uintptr_t h = ((uintptr_t)cache >> 4) ^ ((uintptr_t)method >> 4) * 31 ^ ((uintptr_t)route >> 4) * 131
                  ^ (uintptr_t)code * 7;
    return (Py_ssize_t)((h ^ (h >> 7)) % RESOLVED_SLOTS);
}

/* The resolved entry of a key, or NULL (no exception) when the table does not hold it. The status is
 * compared by value (a framework may make its status line anew for each response): a str by its text,
 * an int by its value. */
static Resolved *find_resolved(PyObject *cache, PyObject *method, PyObject *route, PyObject *status) {
    long code = status_key(status);
    Py_ssize_t k = resolved_slot(cache, method, route, code);
    if (k < 0)
        return NULL;
    Resolved *r = &resolved[k];
    if (r->epoch != cells_epoch || r->cache != cache || r->method != method || r->route != route)
        return NULL;
    if (r->status == status)
        return r;
    if (Py_TYPE(r->status) != Py_TYPE(status))
        return NULL;
    if (PyLong_CheckExact(status))
        return status_key(r->status) == code ? r : NULL;
    return PyUnicode_Compare(r->status, status) == 0 ? r : NULL;  /* both str: no exception */
}

/* Hold entry's cells resolved for the key in its slot (replacing what the slot held), if they can be:
 * an entry whose cells are not all usable float64 cells of their views, or whose bounds are not all
 * floats, is left to count_and_observe every time, which raises where the Python path does. */
static void keep_resolved(PyObject *cache, PyObject *method, PyObject *route, PyObject *status, PyObject *entry) {
    Py_ssize_t k = resolved_slot(cache, method, route, status_key(status));
    if (k < 0 || !PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) < STATUS_ENTRY_FIELDS)
        return;
    PyObject *bounds = PyTuple_GET_ITEM(entry, 4);
    PyObject *overflow = PyTuple_GET_SIZE(entry) > STATUS_ENTRY_FIELDS ? PyTuple_GET_ITEM(entry, STATUS_ENTRY_FIELDS)
                                                                       : Py_None;
    if (!PyTuple_Check(bounds) || bound_values(bounds) == NULL || !PyLong_CheckExact(PyTuple_GET_ITEM(entry, 6)))
        return;
    Py_ssize_t base = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 3));
    Py_ssize_t sum_at = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 5));
    long code = PyLong_AsLong(PyTuple_GET_ITEM(entry, 6));
    double *count = PyErr_Occurred() ? NULL : cell(PyTuple_GET_ITEM(entry, 0), PyTuple_GET_ITEM(entry, 1), 0);
    double *buckets = count ? cell_at(PyTuple_GET_ITEM(entry, 2), base) : NULL;
    double *last = buckets ? cell_at(PyTuple_GET_ITEM(entry, 2), base + PyTuple_GET_SIZE(bounds)) : NULL;
    double *sum = last ? cell_at(PyTuple_GET_ITEM(entry, 2), base + sum_at) : NULL;
    if (sum == NULL) {
        PyErr_Clear();
        return;
    }
    Resolved *r = &resolved[k];
    r->epoch = 0;  /* not found while it changes (a reference dropped here could run other code) */
    Py_XSETREF(r->cache, Py_NewRef(cache));
    Py_XSETREF(r->method, Py_NewRef(method));
    Py_XSETREF(r->route, Py_NewRef(route));
    Py_XSETREF(r->status, Py_NewRef(status));
    Py_XSETREF(r->entry, Py_NewRef(entry));
    r->count = count;
    r->buckets = buckets;
    r->sum = sum;
    r->bounds = bounds;
    r->overflow = overflow == Py_None ? NULL : overflow;
    r->code = code;
    r->epoch = cells_epoch;
}

/* count_and_observe for a resolved entry. */
static int count_resolved(Resolved *r, double seconds) {
    const double *values = bound_values(r->bounds);  /* all floats (checked when resolved); NULL: no memory */
    if (values == NULL)
        return count_and_observe(r->entry, seconds);
    *r->count += 1.0;
    if (r->overflow != NULL && add_cells(r->overflow, 1.0) < 0)
        return -1;
    Py_ssize_t lo = 0, hi = PyTuple_GET_SIZE(r->bounds);
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (values[mid] < seconds)
            lo = mid + 1;
        else
            hi = mid;
    }
    r->buckets[lo] += 1.0;
    *r->sum += seconds;
    return 0;
}

static PyObject *environ_text(PyObject *environ, PyObject *key) {
    PyObject *v = PyDict_GetItemWithError(environ, key);
    return v != NULL && PyUnicode_Check(v) && PyUnicode_GET_LENGTH(v) ? v : NULL;
}

/* A status line whose code is 404 (status_label's: its first three characters). */
static int not_found(PyObject *status) {
    return PyUnicode_Check(status) && PyUnicode_GET_LENGTH(status) >= 3 && PyUnicode_READ_CHAR(status, 0) == '4'
           && PyUnicode_READ_CHAR(status, 1) == '0' && PyUnicode_READ_CHAR(status, 2) == '4';
}

/* The response's route, as wsgi.request_route gives it: the template a framework named, else <unmatched>
 * for a 404, else the template of the path (cached in mw->routes; wsgi.path_template on a miss). A new
 * reference, never NULL: "other" if the environ cannot be read or wsgi.path_template raised, so that the
 * response is still counted (as the Python path's _route_of). */
static PyObject *request_route(Request *req, PyObject *status) {
    Middleware *mw = req->owner;
    PyObject *route = environ_text(req->environ, str_route_key);
    if (route == NULL && !PyErr_Occurred()) {
        if (not_found(status) && str_unmatched != NULL)
            route = str_unmatched;  /* no route named it: one value however many paths clients try */
        else {
            PyObject *path = environ_text(req->environ, str_path_key);
            if (path == NULL && !PyErr_Occurred())
                path = str_slash;
            route = path ? PyDict_GetItemWithError(mw->routes, path) : NULL;
            if (route == NULL && !PyErr_Occurred()) {
                PyObject *made = PyObject_CallMethodObjArgs((PyObject *)mw, str_route, path, NULL);
                if (made != NULL)
                    return made;
            }
        }
    }
    if (route == NULL) {
        PyErr_Clear();
        route = str_other;
    }
    Py_INCREF(route);
    return route;
}

static int finish_workload(Request *req, double seconds, long code, PyObject *route) {
    Middleware *mw = req->owner;
    PyObject *environ = req->environ;
    PyObject *request_id = environ_text(environ, str_request_id_key);
    if (request_id == NULL && !PyErr_Occurred())
        request_id = environ_text(environ, str_default_request_id_key);
    PyObject *tenant = environ_text(environ, str_tenant_key);
    if (tenant == NULL && !PyErr_Occurred())
        tenant = environ_text(environ, mw->tenant_key);
    int rc = -1;
    if (!PyErr_Occurred())
        rc = record(req->method, route, code, seconds, wall_now() - seconds, req->nbytes,
                    request_id ? request_id : empty_str, tenant ? tenant : empty_str);
    return rc;
}

/* The server took the last byte: count, record, then let the response go, then end the in-flight
 * request (which may run a pending optimization: after the response went). */
static int finish(Request *req) {
    if (req->finished)
        return 0;
    req->finished = 1;
    if (req->body != NULL && PyList_CheckExact(req->body)) {  /* its bytes, iterated or not (HEAD) */
        uint64_t n = 0;
        for (Py_ssize_t k = 0; k < PyList_GET_SIZE(req->body); k++) {
            PyObject *chunk = PyList_GET_ITEM(req->body, k);
            if (PyBytes_Check(chunk))
                n += (uint64_t)PyBytes_GET_SIZE(chunk);
        }
        req->nbytes = n;
    }
    Middleware *mw = req->owner;
    double seconds = monotonic_now() - req->started;
    PyObject *status = req->status ? req->status : str_500;
    PyObject *route = request_route(req, status);
    long code = 0;
    int rc;
    Resolved *resolved_entry = find_resolved(mw->statuses, req->method, route, status);
    if (resolved_entry != NULL) {
        rc = count_resolved(resolved_entry, seconds);
        code = resolved_entry->code;
    } else {
        int cached = 0;
        PyObject *entry = status_entry(mw, req->method, status, route, &cached);
        rc = entry ? count_and_observe(entry, seconds) : -1;
        if (rc == 0) {  /* not after an error: the conversion may run Python code (__index__) */
            code = PyLong_AsLong(PyTuple_GET_ITEM(entry, 6));
            if (code == -1 && PyErr_Occurred())
                rc = -1;  /* no workload record; the response still goes and the request still ends */
            else if (cached)  /* what the cache holds, never what its slow path made for this request alone */
                keep_resolved(mw->statuses, req->method, route, status, entry);
        }
        Py_XDECREF(entry);
    }
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    PyErr_Fetch(&type, &value, &tb);  /* whatever failed above, the response must still go */
    if (req->sock != NULL) {  /* right after the count: a kill in between is the one window left */
        set_cork(req->sock, 0);  /* flushes; a socket already closed fails, and has nothing to flush */
        PyErr_Clear();
        Py_CLEAR(req->sock);
    }
    if (rc == 0 && type == NULL && mw->workload && finish_workload(req, seconds, code, route) < 0)
        PyErr_Fetch(&type, &value, &tb);
    Py_DECREF(route);
    if (mw->workload && bound_slab != NULL && slab_end((Slab *)bound_slab) && on_idle != NULL) {
        PyObject *idle = on_idle;  /* held for the call: it may bind() another callback */
        Py_INCREF(idle);
        PyObject *r = PyObject_CallNoArgs(idle);
        Py_DECREF(idle);
        if (r == NULL && type == NULL)
            PyErr_Fetch(&type, &value, &tb);
        Py_XDECREF(r);
    }
    if (type != NULL) {
        PyErr_Restore(type, value, tb);
        return -1;
    }
    return 0;
}

static PyObject *middleware_call(Middleware *self, PyObject *args, PyObject *kw) {
    PyObject *environ, *start_response;
    if (self->app == NULL) {  /* made by __new__ without __init__: every field is NULL */
        PyErr_Format(PyExc_TypeError, "this %.100s was never initialised: create it by calling the class",
                     Py_TYPE(self)->tp_name);
        return NULL;
    }
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "a WSGI app takes (environ, start_response)");
        return NULL;
    }
    if (PyTuple_GET_SIZE(args) != 2) {
        PyErr_Format(PyExc_TypeError, "MetricsMiddleware expected 2 arguments, got %zd", PyTuple_GET_SIZE(args));
        return NULL;
    }
    environ = PyTuple_GET_ITEM(args, 0);
    start_response = PyTuple_GET_ITEM(args, 1);
    if (!PyDict_Check(environ)) {
        PyErr_SetString(PyExc_TypeError, "environ must be a dict");
        return NULL;
    }
    Request *req = PyObject_GC_New(Request, &RequestType);
    if (req == NULL)
        return NULL;
    req->started = monotonic_now();
    Py_INCREF(self);
    req->owner = self;
    Py_INCREF(environ);
    req->environ = environ;
    Py_INCREF(start_response);
    req->server_start_response = start_response;
    req->status = req->body = req->iterator = req->sock = NULL;
    req->nbytes = 0;
    req->finished = 0;
    PyObject *method = environ_text(environ, str_method_key);
    method = method != NULL ? PyDict_GetItemWithError(self->methods, method) : NULL;  /* its known name */
    if (method == NULL)
        method = str_other;
    PyErr_Clear();
    Py_INCREF(method);
    req->method = method;
    PyObject_GC_Track(req);
    if (self->hold) {
        PyObject *sock = PyDict_GetItemWithError(environ, str_socket_key);
        if (sock != NULL && (listeners_held || set_cork(sock, 1) == 0)) {  /* held from its accept, or now */
            Py_INCREF(sock);
            req->sock = sock;
            if (n_listeners)
                hold_the_listeners();  /* after this connection's accept: the next ones inherit it */
        }
        PyErr_Clear();
    }
    if (self->workload) {
        if (PyDict_SetItem(environ, str_wsgi_key, Py_True) < 0) {
            Py_DECREF(req);
            return NULL;
        }
        if (bound_slab != NULL) {
            PyObject *path = environ_text(environ, str_path_key);
            PyErr_Clear();
            slab_begin((Slab *)bound_slab, method, path ? path : str_slash);
        }
    }
    PyObject *call[2] = {environ, (PyObject *)req};
    PyObject *body = PyObject_Vectorcall(self->app, call, 2, NULL);
    if (body == NULL) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        Py_CLEAR(req->status);  /* an app that raised answers 500 */
        if (finish(req) < 0)
            PyErr_Clear();
        PyErr_Restore(type, value, tb);
        Py_DECREF(req);
        return NULL;
    }
    req->body = body;
    return (PyObject *)req;
}

static int middleware_init(Middleware *self, PyObject *args, PyObject *kw) {
    PyObject *app, *statuses, *routes, *methods, *tenant_key;
    int workload, hold;
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "Middleware.__init__ takes positional arguments only");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "OO!O!O!Upp:Middleware", &app, &PyDict_Type, &statuses, &PyDict_Type, &routes,
                          &PyFrozenSet_Type, &methods, &tenant_key, &workload, &hold))
        return -1;
    Py_INCREF(app);
    Py_XSETREF(self->app, app);
    Py_INCREF(statuses);
    Py_XSETREF(self->statuses, statuses);
    Py_INCREF(routes);
    Py_XSETREF(self->routes, routes);
    PyObject *names = method_names(methods);
    if (names == NULL)
        return -1;
    Py_XSETREF(self->methods, names);
    Py_INCREF(tenant_key);
    Py_XSETREF(self->tenant_key, tenant_key);
    self->workload = workload;
    self->hold = hold;
    return 0;
}

static int middleware_traverse(Middleware *self, visitproc visit, void *arg) {
    Py_VISIT(self->app);
    Py_VISIT(self->statuses);
    Py_VISIT(self->routes);
    return 0;
}

static int middleware_clear(Middleware *self) {
    Py_CLEAR(self->app);
    Py_CLEAR(self->statuses);
    Py_CLEAR(self->routes);
    Py_CLEAR(self->methods);
    Py_CLEAR(self->tenant_key);
    return 0;
}

static void middleware_dealloc(Middleware *self) {
    /* a Python subclass's dealloc (subtype_dealloc) untracks, calls this, then drops its type */
    PyObject_GC_UnTrack(self);
    middleware_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject MiddlewareType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rockstar_mp._hotpath.Middleware",
    .tp_basicsize = sizeof(Middleware),
    .tp_dealloc = (destructor)middleware_dealloc,
    .tp_call = (ternaryfunc)middleware_call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The base of MetricsMiddleware when the accelerator is built: its __call__.",
    .tp_traverse = (traverseproc)middleware_traverse,
    .tp_clear = (inquiry)middleware_clear,
    .tp_init = (initproc)middleware_init,
    .tp_new = PyType_GenericNew,
};

/* ---------------------------------------------------------------- the ASGI middleware */
/* The request path of rockstar_mp.worker.asgi.MetricsMiddleware. Its __call__ (asgi_call) makes an
 * AsgiSend per HTTP request (begin), hands it to the app as its send, and returns an AsgiCall: the app's
 * awaitable run through, which calls the AsgiSend's done(status) once the app returned or raised. The
 * well-formed cases are done here; anything else
 * (a header list of odd items, a mounted route, a first-time status or path) is asked of the Python
 * middleware's slow paths (_cells_of, _route_of, _headers_of), which hold the reference behaviour. */
typedef struct {
    PyObject_HEAD
    PyObject *app;         /* the wrapped ASGI app (its "app" attribute) */
    PyObject *cells;       /* dict (method, status, route) -> status entry (as status_entry's): asgi._Cells.cache */
    PyObject *paths;       /* dict raw path -> route template: asgi._Routes' path cache */
    PyObject *methods;     /* dict of known methods, each its own value (method_names) */
    PyObject *tenant;      /* the tenant header's name: lowercase bytes */
    PyObject *request_id;  /* the request id header's name: lowercase bytes */
    PyObject *client_closed;  /* the status of a request cancelled before any response: asgi.CLIENT_CLOSED */
    int workload;
} AsgiMiddleware;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    AsgiMiddleware *owner;
    PyObject *scope;
    PyObject *send;        /* the server's send */
    PyObject *method;      /* the method label */
    PyObject *root_path;   /* the scope's as the request came in (before a Mount changed it) */
    PyObject *status;      /* http.response.start's "status", or NULL */
    double started;
    uint64_t nbytes;       /* body bytes sent */
    int counted, ended;
} AsgiSend;

static PyObject *str_type, *str_status_key, *str_body, *str_more_body, *str_start_type, *str_body_type;
static PyObject *str_scope_route, *str_router, *str_path, *str_root_path, *str_headers, *str_fastapi;
static PyObject *str_effective, *str_path_format, *str_routes_attr, *str_path_template, *str_get;
static PyObject *str_cells_of, *str_route_of, *str_headers_of, *str_method_scope, *str_code_of;
static PyObject *str_http, *str_not_http, *str_throw, *str_close;
static PyObject *status_500;                         /* done()'s fallback: the server answers 500 */
static PyObject *cancelled_error = NULL;            /* asyncio.CancelledError */

/* message[key] (dict or any mapping): a new reference, or NULL with an exception (KeyError if absent). */
static PyObject *message_item(PyObject *message, PyObject *key) {
    if (!PyDict_Check(message))
        return PyObject_GetItem(message, key);
    PyObject *v = PyDict_GetItemWithError(message, key);
    if (v == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    Py_INCREF(v);
    return v;
}

/* message.get(key): a new reference (None when absent), or NULL with an exception. */
static PyObject *message_get(PyObject *message, PyObject *key) {
    if (!PyDict_Check(message))
        return PyObject_CallMethodOneArg(message, str_get, key);
    PyObject *v = PyDict_GetItemWithError(message, key);
    if (v == NULL && PyErr_Occurred())
        return NULL;
    v = v ? v : Py_None;
    Py_INCREF(v);
    return v;
}

/* A dict's value at key, borrowed; NULL (no exception) when absent or unreadable. */
static PyObject *scope_get(PyObject *scope, PyObject *key) {
    PyObject *v = PyDict_GetItemWithError(scope, key);
    if (v == NULL)
        PyErr_Clear();
    return v;
}

static int nonempty_str(PyObject *o) { return o != NULL && PyUnicode_Check(o) && PyUnicode_GET_LENGTH(o); }

/* The route template of a matched route, as asgi._Routes._template gives it (a new reference; NULL with
 * no exception: none, <unmatched>; NULL with one: an attribute raised). */
static PyObject *route_template(PyObject *scope, PyObject *route) {
    PyObject *attr;
    if (_PyObject_LookupAttr(route, str_routes_attr, &attr) < 0)
        return NULL;
    if (attr != NULL) {  /* a Mount whose app is no router: what it matched is its prefix */
        Py_DECREF(attr);
        Py_INCREF(str_path_template);
        return str_path_template;
    }
    PyObject *fastapi = scope_get(scope, str_fastapi);
    if (fastapi != NULL && PyDict_Check(fastapi)) {  /* FastAPI's effective route: included prefixes */
        PyObject *context = scope_get(fastapi, str_effective);
        if (context != NULL && context != Py_None) {
            if (_PyObject_LookupAttr(context, str_path_format, &attr) < 0)
                return NULL;
            if (nonempty_str(attr))
                return attr;
            Py_XDECREF(attr);
        }
    }
    if (_PyObject_LookupAttr(route, str_path_format, &attr) < 0)
        return NULL;
    int truth = attr != NULL ? PyObject_IsTrue(attr) : 0;
    if (truth < 0) {
        Py_DECREF(attr);
        return NULL;
    }
    if (!truth) {
        Py_XDECREF(attr);
        if (_PyObject_LookupAttr(route, str_path, &attr) < 0)
            return NULL;
    }
    if (nonempty_str(attr))
        return attr;
    Py_XDECREF(attr);
    return NULL;
}

/* The request's route (asgi._Routes.of): a new reference, or NULL with an exception. */
static PyObject *asgi_route(AsgiSend *req, long code) {
    PyObject *scope = req->scope;
    PyObject *route = scope_get(scope, str_scope_route);
    if (route == NULL || route == Py_None) {
        int routed = PyDict_Contains(scope, str_router);
        PyErr_Clear();  /* a key whose comparison raised: the Python path below asks again */
        if (routed == 1 || code == 404)
            return Py_NewRef(str_unmatched);
        PyObject *path = scope_get(scope, str_path);
        PyObject *cached = nonempty_str(path) ? scope_get(req->owner->paths, path) : NULL;
        if (cached != NULL) {
            Py_INCREF(cached);
            return cached;
        }
    } else {
        PyObject *mounted = scope_get(scope, str_root_path);
        if (mounted == NULL)
            mounted = Py_None;
        if (mounted == req->root_path) {  /* no Mount moved it: the route's own template */
            PyObject *template = route_template(scope, route);
            if (template != NULL || PyErr_Occurred())
                return template;
            Py_INCREF(str_unmatched);
            return str_unmatched;
        }
    }
    PyObject *status = PyLong_FromLong(code);
    if (status == NULL)
        return NULL;
    PyObject *r = PyObject_CallMethodObjArgs((PyObject *)req->owner, str_route_of, scope, req->root_path, status,
                                             NULL);
    Py_DECREF(status);
    return r;
}

/* The tenant and request id headers' values (latin-1), "" for none, into *tenant and *request_id (new
 * references); headers of any other shape than a list of (bytes, bytes) go to _headers_of. 0 or -1. */
static int asgi_headers(AsgiSend *req, PyObject **tenant, PyObject **request_id) {
    AsgiMiddleware *mw = req->owner;
    PyObject *headers = scope_get(req->scope, str_headers);
    PyObject *found_tenant = NULL, *found_id = NULL;
    int regular = headers == NULL || headers == Py_None || PyList_CheckExact(headers);
    Py_ssize_t n = regular && headers != NULL && headers != Py_None ? PyList_GET_SIZE(headers) : 0;
    for (Py_ssize_t k = 0; k < n && regular; k++) {
        PyObject *pair = PyList_GET_ITEM(headers, k);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyBytes_CheckExact(PyTuple_GET_ITEM(pair, 0))
            || !PyBytes_CheckExact(PyTuple_GET_ITEM(pair, 1))) {
            regular = 0;
            break;
        }
        PyObject *name = PyTuple_GET_ITEM(pair, 0);
        Py_ssize_t len = PyBytes_GET_SIZE(name);
        if (len == PyBytes_GET_SIZE(mw->tenant) && !memcmp(PyBytes_AS_STRING(name), PyBytes_AS_STRING(mw->tenant), len))
            found_tenant = PyTuple_GET_ITEM(pair, 1);  /* the last one stands */
        else if (len == PyBytes_GET_SIZE(mw->request_id)
                 && !memcmp(PyBytes_AS_STRING(name), PyBytes_AS_STRING(mw->request_id), len))
            found_id = PyTuple_GET_ITEM(pair, 1);
    }
    if (!regular) {
        PyObject *both = PyObject_CallMethodOneArg((PyObject *)mw, str_headers_of, req->scope);
        if (both == NULL)
            return -1;
        if (!PyTuple_Check(both) || PyTuple_GET_SIZE(both) != 2) {
            Py_DECREF(both);
            PyErr_SetString(PyExc_TypeError, "_headers_of() must return (tenant, request id)");
            return -1;
        }
        *tenant = Py_NewRef(PyTuple_GET_ITEM(both, 0));
        *request_id = Py_NewRef(PyTuple_GET_ITEM(both, 1));
        Py_DECREF(both);
        return 0;
    }
    *tenant = found_tenant ? PyUnicode_DecodeLatin1(PyBytes_AS_STRING(found_tenant), PyBytes_GET_SIZE(found_tenant),
                                                    NULL) : Py_NewRef(empty_str);
    if (*tenant == NULL)
        return -1;
    *request_id = found_id ? PyUnicode_DecodeLatin1(PyBytes_AS_STRING(found_id), PyBytes_GET_SIZE(found_id), NULL)
                           : Py_NewRef(empty_str);
    if (*request_id == NULL) {
        Py_CLEAR(*tenant);
        return -1;
    }
    return 0;
}

/* The workload record of a counted request. */
static int asgi_record(AsgiSend *req, PyObject *route, long code, double seconds) {
    PyObject *tenant, *request_id;
    int rc = asgi_headers(req, &tenant, &request_id);
    if (rc == 0) {
        rc = record(req->method, route, code, seconds, wall_now() - seconds, req->nbytes, request_id, tenant);
        Py_DECREF(tenant);
        Py_DECREF(request_id);
    }
    return rc;
}

/* The status code a route is found with (asgi.status_code): an int status itself, else asked of
 * _code_of. 0, or -1 with an exception. */
static int asgi_code(AsgiMiddleware *mw, PyObject *status, long *code) {
    if (PyLong_CheckExact(status)) {
        *code = PyLong_AsLong(status);
        if (*code == -1 && PyErr_Occurred()) {
            PyErr_Clear();  /* beyond a long: no route's 404 (its record fails, as in the Python path) */
            *code = -1;
        }
        return 0;
    }
    PyObject *r = PyObject_CallMethodOneArg((PyObject *)mw, str_code_of, status);
    if (r == NULL)
        return -1;
    *code = PyLong_AsLong(r);
    Py_DECREF(r);
    return *code == -1 && PyErr_Occurred() ? -1 : 0;
}

/* Count the request with status (http.requests, the duration histogram) and record it. 0, or -1. */
static int asgi_count(AsgiSend *req, PyObject *status) {
    AsgiMiddleware *mw = req->owner;
    double seconds = monotonic_now() - req->started;
    req->counted = 1;
    long code;
    if (asgi_code(mw, status, &code) < 0)
        return -1;
    PyObject *route = asgi_route(req, code);
    if (route == NULL)
        return -1;
    Resolved *resolved_entry = find_resolved(mw->cells, req->method, route, status);
    if (resolved_entry != NULL) {
        int rc = count_resolved(resolved_entry, seconds);
        if (rc == 0 && mw->workload)
            rc = asgi_record(req, route, resolved_entry->code, seconds);
        Py_DECREF(route);
        return rc;
    }
    PyObject *key = PyTuple_Pack(3, req->method, status, route);
    if (key == NULL) {
        Py_DECREF(route);
        return -1;
    }
    PyObject *entry = PyDict_GetItemWithError(mw->cells, key);
    Py_XINCREF(entry);
    Py_DECREF(key);
    int cached = entry != NULL;
    if (entry == NULL && PyErr_ExceptionMatches(PyExc_TypeError))
        PyErr_Clear();  /* an unhashable "status": asked every time, as in the Python path */
    if (entry == NULL && !PyErr_Occurred())
        entry = PyObject_CallMethodObjArgs((PyObject *)mw, str_cells_of, req->method, status, route, NULL);
    if (entry != NULL && (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != STATUS_ENTRY_FIELDS + 1)) {
        Py_CLEAR(entry);
        PyErr_SetString(PyExc_TypeError, "_cells_of() must return an 8-tuple");
    }
    int rc = entry != NULL ? count_and_observe(entry, seconds) : -1;
    if (rc == 0 && cached)
        keep_resolved(mw->cells, req->method, route, status, entry);
    if (rc == 0 && mw->workload) {
        long recorded = PyLong_AsLong(PyTuple_GET_ITEM(entry, STATUS_ENTRY_FIELDS - 1));
        rc = recorded == -1 && PyErr_Occurred() ? -1 : asgi_record(req, route, recorded, seconds);
    }
    Py_XDECREF(entry);
    Py_DECREF(route);
    return rc;
}

/* kind == text: 1, 0, or -1 with an exception. A server's and a framework's message types are literals that
 * are not interned (they hold dots): compared by their bytes, not through rich comparison. */
static int same_text(PyObject *kind, PyObject *text) {
    if (kind == text)
        return 1;
    if (PyUnicode_CheckExact(kind))
        return equal_strs(kind, text);
    return PyObject_RichCompareBool(kind, text, Py_EQ);
}

static PyObject *asgi_send_call(AsgiSend *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "send(message) takes one message");
        return NULL;
    }
    PyObject *message = args[0];
    PyObject *kind = message_item(message, str_type);
    if (kind == NULL)
        return NULL;
    int is_body = same_text(kind, str_body_type);
    int is_start = is_body == 0 ? same_text(kind, str_start_type) : 0;
    Py_DECREF(kind);
    if (is_body < 0 || is_start < 0)
        return NULL;
    if (is_body) {
        PyObject *body = message_get(message, str_body);
        if (body == NULL)
            return NULL;
        if (PyBytes_CheckExact(body))
            self->nbytes += (uint64_t)PyBytes_GET_SIZE(body);
        else {
            int truth = PyObject_IsTrue(body);
            Py_ssize_t n = truth > 0 ? PyObject_Size(body) : 0;
            if (truth < 0 || n < 0) {
                Py_DECREF(body);
                return NULL;
            }
            self->nbytes += (uint64_t)n;
        }
        Py_DECREF(body);
        PyObject *more = message_get(message, str_more_body);
        if (more == NULL)
            return NULL;
        int more_body = PyObject_IsTrue(more);
        Py_DECREF(more);
        if (more_body < 0)
            return NULL;
        if (!more_body && !self->counted && self->status != NULL) {
            int started = PyObject_IsTrue(self->status);
            if (started < 0 || (started && asgi_count(self, self->status) < 0))
                return NULL;  /* counted before the last bytes go (see asgi.py's docstring) */
        }
    } else if (is_start) {
        PyObject *status = message_item(message, str_status_key);
        if (status == NULL)
            return NULL;
        Py_XSETREF(self->status, status);
    }
    return PyObject_Vectorcall(self->send, args, 1, NULL);
}

/* done(status): the app returned or raised. Counts (and records) a request whose response did not reach
 * its last body message, with the status it started, else with status; then the request is no longer in
 * flight (which may run a pending optimization). */
static PyObject *asgi_send_done(AsgiSend *self, PyObject *fallback) {
    if (self->ended)
        Py_RETURN_NONE;
    self->ended = 1;
    int rc = 0;
    if (!self->counted) {
        int started = self->status != NULL ? PyObject_IsTrue(self->status) : 0;
        rc = started < 0 ? -1 : asgi_count(self, started ? self->status : fallback);
    }
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    PyErr_Fetch(&type, &value, &tb);  /* whatever failed, the request ends */
    if (self->owner->workload && bound_slab != NULL && slab_end((Slab *)bound_slab) && on_idle != NULL) {
        PyObject *idle = Py_NewRef(on_idle);  /* held for the call: it may bind() another callback */
        PyObject *r = PyObject_CallNoArgs(idle);
        Py_DECREF(idle);
        if (r == NULL && type == NULL)
            PyErr_Fetch(&type, &value, &tb);
        Py_XDECREF(r);
    }
    if (type != NULL) {
        PyErr_Restore(type, value, tb);
        return NULL;
    }
    (void)rc;
    Py_RETURN_NONE;
}

static int asgi_send_traverse(AsgiSend *self, visitproc visit, void *arg) {
    Py_VISIT(self->owner);
    Py_VISIT(self->scope);
    Py_VISIT(self->send);
    Py_VISIT(self->status);
    return 0;
}

static int asgi_send_clear(AsgiSend *self) {
    Py_CLEAR(self->scope);
    Py_CLEAR(self->send);
    Py_CLEAR(self->status);
    return 0;
}

static void asgi_send_dealloc(AsgiSend *self) {
    PyObject_GC_UnTrack(self);
    if (!self->ended && self->owner != NULL && self->owner->workload && bound_slab != NULL)
        slab_end((Slab *)bound_slab);  /* dropped without done(): no longer in flight */
    asgi_send_clear(self);
    Py_XDECREF(self->owner);
    Py_XDECREF(self->method);
    Py_XDECREF(self->root_path);
    PyObject_GC_Del(self);
}

static PyMethodDef asgi_send_methods[] = {
    {"done", (PyCFunction)asgi_send_done, METH_O, "The app returned or raised: count if not yet, end the request."},
    {NULL}};

static PyTypeObject AsgiSendType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rockstar_mp._hotpath.AsgiSend",
    .tp_basicsize = sizeof(AsgiSend),
    .tp_dealloc = (destructor)asgi_send_dealloc,
    .tp_vectorcall_offset = offsetof(AsgiSend, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "The send an ASGI app gets from MetricsMiddleware: counts its response, then sends on.",
    .tp_traverse = (traverseproc)asgi_send_traverse,
    .tp_clear = (inquiry)asgi_send_clear,
    .tp_methods = asgi_send_methods,
};

/* begin(scope, send): one HTTP request starts; its AsgiSend. */
static PyObject *asgi_begin(AsgiMiddleware *self, PyObject *const *args, Py_ssize_t n) {
    if (n != 2) {
        PyErr_SetString(PyExc_TypeError, "begin(scope, send)");
        return NULL;
    }
    if (self->cells == NULL) {
        PyErr_Format(PyExc_TypeError, "this %.100s was never initialised: create it by calling the class",
                     Py_TYPE(self)->tp_name);
        return NULL;
    }
    PyObject *scope = args[0];
    if (!PyDict_Check(scope)) {
        PyErr_SetString(PyExc_TypeError, "an ASGI scope must be a dict");
        return NULL;
    }
    double started = monotonic_now();
    PyObject *method = PyDict_GetItemWithError(scope, str_method_scope);
    if (method == NULL && PyErr_Occurred())
        return NULL;
    PyObject *known = method != NULL ? PyDict_GetItemWithError(self->methods, method) : NULL;  /* its known name */
    if (known == NULL && PyErr_Occurred())
        return NULL;  /* unhashable: as `method not in KNOWN_METHODS` raises */
    method = known ? known : str_other;
    PyObject *root_path = PyDict_GetItemWithError(scope, str_root_path);
    if (root_path == NULL && PyErr_Occurred())
        return NULL;
    AsgiSend *req = PyObject_GC_New(AsgiSend, &AsgiSendType);
    if (req == NULL)
        return NULL;
    req->vectorcall = (vectorcallfunc)asgi_send_call;
    req->owner = (AsgiMiddleware *)Py_NewRef(self);
    req->scope = Py_NewRef(scope);
    req->send = Py_NewRef(args[1]);
    req->method = Py_NewRef(method);
    req->root_path = Py_NewRef(root_path ? root_path : empty_str);
    req->status = NULL;
    req->started = started;
    req->nbytes = 0;
    req->counted = req->ended = 0;
    PyObject_GC_Track(req);
    if (self->workload && bound_slab != NULL) {
        PyObject *path = scope_get(scope, str_path);
        slab_begin((Slab *)bound_slab, method, nonempty_str(path) ? path : str_slash);
    }
    return (PyObject *)req;
}

/* ---------------------------------------------------------------- the ASGI call */
/* What MetricsMiddleware(scope, receive, send) returns for an HTTP request: the app's awaitable, run
 * through, and the request ended (AsgiSend.done) once the app returned or raised, as the coroutine
 *     try: await app(scope, receive, request)
 *     except BaseException as error: request.done(499 if cancelled else 500); raise
 *     request.done(500)
 * would, without a Python frame per request. It is awaitable (am_await, am_send: a server's `await`
 * drives it with no method call) and a coroutine as asyncio's and collections.abc's checks see one
 * (send, throw, close), so a server may also run it as a task. */
typedef struct {
    PyObject_HEAD
    PyObject *awaiting;  /* the iterator of the app's awaitable; NULL once the app returned or raised */
    AsgiSend *request;
} AsgiCall;

static PyTypeObject AsgiCallType;

/* The app raised (its exception set): end the request with the status a cancelled or a failed request
 * gets, and leave the app's exception set (or done()'s, with the app's as its context). */
static void end_failed(AsgiSend *request) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    int cancelled = type != NULL && PyErr_GivenExceptionMatches(type, cancelled_error);
    PyObject *r = asgi_send_done(request, cancelled ? request->owner->client_closed : status_500);
    if (r != NULL) {
        Py_DECREF(r);
        PyErr_Restore(type, value, tb);
        return;
    }
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL)
        PyException_SetTraceback(value, tb);
    PyObject *new_type, *new_value, *new_tb;
    PyErr_Fetch(&new_type, &new_value, &new_tb);
    PyErr_NormalizeException(&new_type, &new_value, &new_tb);
    PyException_SetContext(new_value, value);  /* steals value */
    Py_XDECREF(type);
    Py_XDECREF(tb);
    PyErr_Restore(new_type, new_value, new_tb);
}

/* The app's awaitable is done: PYGEN_RETURN (*result its value) or PYGEN_ERROR (an exception set). End
 * the request; the status to hand on. */
static PySendResult call_finished(AsgiCall *self, PySendResult status, PyObject **result) {
    Py_CLEAR(self->awaiting);
    if (status == PYGEN_ERROR) {
        end_failed(self->request);
        return PYGEN_ERROR;
    }
    PyObject *r = asgi_send_done(self->request, status_500);  /* a response never completed: the server's 500 */
    if (r == NULL) {
        Py_CLEAR(*result);
        return PYGEN_ERROR;
    }
    Py_DECREF(r);
    return PYGEN_RETURN;
}

static PySendResult call_am_send(AsgiCall *self, PyObject *value, PyObject **result) {
    if (self->awaiting == NULL) {
        *result = NULL;
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited MetricsMiddleware call");
        return PYGEN_ERROR;
    }
    PySendResult status = PyIter_Send(self->awaiting, value, result);
    return status == PYGEN_NEXT ? status : call_finished(self, status, result);
}

/* A method call's end of a step: the value yielded, or StopIteration(value) once the app returned. */
static PyObject *call_step_result(PySendResult status, PyObject *result, int none_ends) {
    if (status != PYGEN_RETURN)
        return result;  /* yielded, or NULL with the exception set */
    if (result == Py_None && none_ends) {
        Py_DECREF(result);
        return NULL;  /* tp_iternext: exhausted, no exception */
    }
    PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, result);
    Py_DECREF(result);
    if (stop != NULL) {
        PyErr_SetObject(PyExc_StopIteration, stop);
        Py_DECREF(stop);
    }
    return NULL;
}

static PyObject *call_iternext(AsgiCall *self) {
    PyObject *result;
    PySendResult status = call_am_send(self, Py_None, &result);
    return call_step_result(status, result, 1);
}

static PyObject *call_send(AsgiCall *self, PyObject *value) {
    PyObject *result;
    PySendResult status = call_am_send(self, value, &result);
    return call_step_result(status, result, 0);
}

/* Raise what throw(type[, value]) or throw(exception) names, as a coroutine's throw does. Returns NULL. */
static PyObject *raise_thrown(PyObject *const *args, Py_ssize_t n) {
    if (PyExceptionInstance_Check(args[0]))
        PyErr_SetObject((PyObject *)Py_TYPE(args[0]), args[0]);
    else if (PyExceptionClass_Check(args[0]))
        PyErr_SetObject(args[0], n > 1 ? args[1] : NULL);
    else
        PyErr_SetString(PyExc_TypeError, "exceptions must be classes or instances deriving from BaseException");
    return NULL;
}

/* throw(...): into the app's awaitable, as `await` delegates it; an iterator with no throw of its own
 * gets the exception raised at the await, as Python does. */
static PyObject *call_throw(AsgiCall *self, PyObject *const *args, Py_ssize_t n) {
    if (n < 1 || n > 3) {
        PyErr_SetString(PyExc_TypeError, "throw(value) or throw(type[, value[, traceback]])");
        return NULL;
    }
    if (self->awaiting == NULL)  /* finished: the exception comes straight back, as from a finished coroutine */
        return raise_thrown(args, n);
    PyObject *throw, *result = NULL;
    int found = _PyObject_LookupAttr(self->awaiting, str_throw, &throw);  /* its error ends the app as one raised */
    if (found > 0)
        result = PyObject_Vectorcall(throw, args, n, NULL);
    else if (found == 0)
        raise_thrown(args, n);
    Py_XDECREF(throw);
    if (result != NULL)
        return result;  /* the app caught it and awaits again */
    if (!PyErr_ExceptionMatches(PyExc_StopIteration)) {
        call_finished(self, PYGEN_ERROR, &result);
        return NULL;
    }
    PyObject *type, *value, *tb;  /* the app returned: end the request, then hand the StopIteration on */
    PyErr_Fetch(&type, &value, &tb);
    result = Py_NewRef(Py_None);
    if (call_finished(self, PYGEN_RETURN, &result) == PYGEN_ERROR) {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return NULL;
    }
    Py_DECREF(result);
    PyErr_Restore(type, value, tb);
    return NULL;
}

/* close(): the app's awaitable is closed (GeneratorExit at the await) and the request ends as a failed
 * one (500), as it would in the coroutine; whatever the app's close raised is raised after. */
static PyObject *call_close(AsgiCall *self, PyObject *unused) {
    if (self->awaiting == NULL)
        Py_RETURN_NONE;
    PyObject *close, *r = NULL;
    if (_PyObject_LookupAttr(self->awaiting, str_close, &close) >= 0) {
        r = close != NULL ? PyObject_CallNoArgs(close) : Py_NewRef(Py_None);
        Py_XDECREF(close);
    }
    Py_CLEAR(self->awaiting);
    if (r != NULL) {
        Py_DECREF(r);
        PyErr_SetNone(PyExc_GeneratorExit);
    }
    end_failed(self->request);
    if (PyErr_ExceptionMatches(PyExc_GeneratorExit)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return NULL;
}

/* A call dropped while the app still awaited (its task collected): closed, as a coroutine's finalizer does. */
static void call_finalize(AsgiCall *self) {
    if (self->awaiting == NULL)
        return;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *r = call_close(self, NULL);
    if (r == NULL)
        PyErr_WriteUnraisable((PyObject *)self);
    Py_XDECREF(r);
    PyErr_Restore(type, value, tb);
}

static int call_traverse(AsgiCall *self, visitproc visit, void *arg) {
    Py_VISIT(self->awaiting);
    Py_VISIT(self->request);
    return 0;
}

static int call_clear(AsgiCall *self) {
    Py_CLEAR(self->awaiting);
    Py_CLEAR(self->request);
    return 0;
}

static void call_dealloc(AsgiCall *self) {
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0)
        return;  /* resurrected */
    PyObject_GC_UnTrack(self);
    call_clear(self);
    PyObject_GC_Del(self);
}

static PyAsyncMethods call_async = {
    .am_await = (unaryfunc)Py_NewRef,
    .am_send = (sendfunc)call_am_send,
};

static PyMethodDef call_methods[] = {
    {"send", (PyCFunction)call_send, METH_O, "Resume the app with a value; StopIteration once it returned."},
    {"throw", (PyCFunction)(void (*)(void))call_throw, METH_FASTCALL, "Raise an exception at the app's await."},
    {"close", (PyCFunction)call_close, METH_NOARGS, "Close the app's awaitable; the request ends (500)."},
    {NULL}};

static PyTypeObject AsgiCallType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rockstar_mp._hotpath.AsgiCall",
    .tp_basicsize = sizeof(AsgiCall),
    .tp_dealloc = (destructor)call_dealloc,
    .tp_as_async = &call_async,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One HTTP request through MetricsMiddleware: the app's awaitable, then the request's end.",
    .tp_traverse = (traverseproc)call_traverse,
    .tp_clear = (inquiry)call_clear,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)call_iternext,
    .tp_methods = call_methods,
    .tp_finalize = (destructor)call_finalize,
};

/* The iterator `await` drives for awaitable (a new reference), or NULL with TypeError. */
static PyObject *awaited_iterator(PyObject *awaitable) {
    if (PyCoro_CheckExact(awaitable))
        return Py_NewRef(awaitable);
    unaryfunc get = Py_TYPE(awaitable)->tp_as_async ? Py_TYPE(awaitable)->tp_as_async->am_await : NULL;
    PyObject *it = get != NULL ? get(awaitable) : NULL;
    if (it == NULL && !PyErr_Occurred())
        PyErr_Format(PyExc_TypeError, "the ASGI app returned %.100s, which cannot be awaited",
                     Py_TYPE(awaitable)->tp_name);
    if (it != NULL && (!PyIter_Check(it) || PyCoro_CheckExact(it))) {
        PyErr_Format(PyExc_TypeError, "__await__() returned %.100s, not an iterator", Py_TYPE(it)->tp_name);
        Py_CLEAR(it);
    }
    return it;
}

/* MetricsMiddleware(scope, receive, send): an AsgiCall for an HTTP request; any other scope goes to the
 * Python middleware's _not_http (WebSockets counted there, lifespan passed through). */
static PyObject *asgi_call(AsgiMiddleware *self, PyObject *args, PyObject *kwargs) {
    if ((kwargs != NULL && PyDict_GET_SIZE(kwargs)) || PyTuple_GET_SIZE(args) != 3) {
        PyErr_Format(PyExc_TypeError, "MetricsMiddleware expected 3 arguments (scope, receive, send), got %zd",
                     PyTuple_GET_SIZE(args) + (kwargs != NULL ? PyDict_GET_SIZE(kwargs) : 0));
        return NULL;
    }
    PyObject *scope = PyTuple_GET_ITEM(args, 0), *receive = PyTuple_GET_ITEM(args, 1);
    if (self->cells == NULL || self->app == NULL) {
        PyErr_Format(PyExc_TypeError, "this %.100s was never initialised: create it by calling the class",
                     Py_TYPE(self)->tp_name);
        return NULL;
    }
    PyObject *kind = message_item(scope, str_type);
    int http = kind != NULL ? same_text(kind, str_http) : -1;
    Py_XDECREF(kind);
    if (http < 0)
        return NULL;
    if (!http)
        return PyObject_CallMethodObjArgs((PyObject *)self, str_not_http, scope, receive, PyTuple_GET_ITEM(args, 2),
                                          NULL);
    PyObject *begin_args[2] = {scope, PyTuple_GET_ITEM(args, 2)};
    AsgiSend *request = (AsgiSend *)asgi_begin(self, begin_args, 2);
    if (request == NULL)
        return NULL;
    PyObject *app_args[3] = {scope, receive, (PyObject *)request};
    PyObject *awaitable = PyObject_Vectorcall(self->app, app_args, 3, NULL);
    PyObject *awaiting = awaitable != NULL ? awaited_iterator(awaitable) : NULL;
    Py_XDECREF(awaitable);
    AsgiCall *call = awaiting != NULL ? PyObject_GC_New(AsgiCall, &AsgiCallType) : NULL;
    if (call == NULL) {
        Py_XDECREF(awaiting);
        end_failed(request);
        Py_DECREF(request);
        return NULL;
    }
    call->awaiting = awaiting;
    call->request = request;
    PyObject_GC_Track(call);
    return (PyObject *)call;
}

static int asgi_init(AsgiMiddleware *self, PyObject *args, PyObject *kw) {
    PyObject *cells, *paths, *methods, *tenant, *request_id, *client_closed;
    int workload;
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "AsgiMiddleware.__init__ takes positional arguments only");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "O!O!O!SSpO!:AsgiMiddleware", &PyDict_Type, &cells, &PyDict_Type, &paths,
                          &PyFrozenSet_Type, &methods, &tenant, &request_id, &workload, &PyLong_Type,
                          &client_closed))
        return -1;
    Py_XSETREF(self->cells, Py_NewRef(cells));
    Py_XSETREF(self->paths, Py_NewRef(paths));
    PyObject *names = method_names(methods);
    if (names == NULL)
        return -1;
    Py_XSETREF(self->methods, names);
    Py_XSETREF(self->tenant, Py_NewRef(tenant));
    Py_XSETREF(self->request_id, Py_NewRef(request_id));
    Py_XSETREF(self->client_closed, Py_NewRef(client_closed));
    self->workload = workload;
    if (cancelled_error == NULL) {
        PyObject *asyncio = PyImport_ImportModule("asyncio");
        cancelled_error = asyncio ? PyObject_GetAttrString(asyncio, "CancelledError") : NULL;
        Py_XDECREF(asyncio);
        if (cancelled_error == NULL)
            return -1;
    }
    return 0;
}

static int asgi_traverse(AsgiMiddleware *self, visitproc visit, void *arg) {
    Py_VISIT(self->app);
    Py_VISIT(self->cells);
    Py_VISIT(self->paths);
    return 0;
}

static int asgi_clear(AsgiMiddleware *self) {
    Py_CLEAR(self->app);
    Py_CLEAR(self->cells);
    Py_CLEAR(self->paths);
    Py_CLEAR(self->methods);
    Py_CLEAR(self->tenant);
    Py_CLEAR(self->request_id);
    Py_CLEAR(self->client_closed);
    return 0;
}

static void asgi_dealloc(AsgiMiddleware *self) {
    PyObject_GC_UnTrack(self);
    asgi_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef asgi_methods[] = {
    {"_begin", (PyCFunction)(void (*)(void))asgi_begin, METH_FASTCALL, "An HTTP request starts: its send."},
    {NULL}};

static PyMemberDef asgi_members[] = {
    {"app", T_OBJECT_EX, offsetof(AsgiMiddleware, app), 0, "the wrapped ASGI app"},
    {NULL}};

static PyTypeObject AsgiMiddlewareType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rockstar_mp._hotpath.AsgiMiddleware",
    .tp_basicsize = sizeof(AsgiMiddleware),
    .tp_dealloc = (destructor)asgi_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_call = (ternaryfunc)asgi_call,
    .tp_doc = "The base of asgi.MetricsMiddleware when the accelerator is built: its __call__ and _begin.",
    .tp_traverse = (traverseproc)asgi_traverse,
    .tp_clear = (inquiry)asgi_clear,
    .tp_init = (initproc)asgi_init,
    .tp_new = PyType_GenericNew,
    .tp_methods = asgi_methods,
    .tp_members = asgi_members,
};

/* ---------------------------------------------------------------- module functions */
/* A byte span from configure(): an offset and a size, both >= 0, whose end does not overflow. 0, or -1
 * with an exception. */
static int read_span(PyObject *span, const char *what, Py_ssize_t *at, Py_ssize_t *size) {
    if (!PyTuple_Check(span) || PyTuple_GET_SIZE(span) != 2) {
        PyErr_Format(PyExc_TypeError, "configure(): %s must be a tuple (offset, size)", what);
        return -1;
    }
    *at = PyLong_AsSsize_t(PyTuple_GET_ITEM(span, 0));
    *size = PyLong_AsSsize_t(PyTuple_GET_ITEM(span, 1));
    if (PyErr_Occurred())
        return -1;
    if (*at < 0 || *size < 0 || *at > PY_SSIZE_T_MAX - *size) {
        PyErr_Format(PyExc_ValueError, "configure(): %s: offset and size must be >= 0", what);
        return -1;
    }
    return 0;
}

/* The record's fields from configure()'s dict {name: (offset, size)} into off/size (the numeric ones of
 * the size record() stores); the record's end in *end. 0, or -1 with an exception. */
static int read_record(PyObject *record, Py_ssize_t *off, Py_ssize_t *size, Py_ssize_t *end) {
    if (PyDict_GET_SIZE(record) != RECORD_FIELDS) {
        PyErr_SetString(PyExc_ValueError, "configure(): the record's fields changed: update _hotpath.c's record()");
        return -1;
    }
    *end = 0;
    for (int k = 0; k < RECORD_FIELDS; k++) {
        PyObject *span = PyDict_GetItemString(record, record_fields[k].name);  /* borrowed */
        if (span == NULL) {
            PyErr_Format(PyExc_KeyError, "configure(): the record has no field %s: update _hotpath.c",
                         record_fields[k].name);
            return -1;
        }
        if (read_span(span, record_fields[k].name, &off[k], &size[k]) < 0)
            return -1;
        if (record_fields[k].size && size[k] != record_fields[k].size) {
            PyErr_Format(PyExc_ValueError, "configure(): the record's field %s changed size: update _hotpath.c",
                         record_fields[k].name);
            return -1;
        }
        if (off[k] + size[k] > *end)
            *end = off[k] + size[k];
    }
    return 0;
}

/* Where the sequence word and the record lie in a ring slot: the word aligned, the two apart. The end of
 * the slot's used bytes in *end. 0, or -1 with ValueError. */
static int check_slot(Py_ssize_t seq, Py_ssize_t payload, Py_ssize_t record_end, Py_ssize_t *end) {
    if (seq < 0 || seq % WORD || seq > PY_SSIZE_T_MAX - WORD
        || payload < 0 || payload > PY_SSIZE_T_MAX - record_end) {
        PyErr_SetString(PyExc_ValueError,
                        "configure(): sequence_at must be a multiple of 8 and payload_at >= 0");
        return -1;
    }
    if (seq < payload + record_end && payload < seq + WORD) {
        PyErr_SetString(PyExc_ValueError, "configure(): the sequence word and the record overlap");
        return -1;
    }
    *end = seq + WORD > payload + record_end ? seq + WORD : payload + record_end;
    return 0;
}

/* configure(scale, min_seconds, buckets_per_block, sequence_at, payload_at, record, keys): constants from
 * Python. The sketch (sketch.BUCKET_SCALE, MIN_SECONDS, BUCKETS_PER_BLOCK), the ring slot
 * (layout.SLOT_SEQ.offset, layout.SLOT_PAYLOAD), the record's fields (layout.RECORD_SPANS: {name: (offset,
 * size)}), and keys: the environ keys of rockstar_mp.worker.keys, and "unmatched", the route of a 404 no
 * route named. All are checked before any is stored; the slot and record layout cannot change once
 * set, as every Slab was checked against it. */
static PyObject *py_configure(PyObject *module, PyObject *args) {
    double scale, least;
    long block;
    Py_ssize_t seq, payload;
    PyObject *record, *keys;
    if (!PyArg_ParseTuple(args, "ddlnnO!O!:configure", &scale, &least, &block, &seq, &payload, &PyDict_Type,
                          &record, &PyDict_Type, &keys))
        return NULL;
    if (!(isfinite(scale) && scale > 0 && isfinite(least) && least > 0)) {
        PyErr_SetString(PyExc_ValueError, "configure(): scale and min_seconds must be finite and > 0");
        return NULL;
    }
    if (block < 1) {  /* any width is safe: every cell is bounds-checked against its view */
        PyErr_SetString(PyExc_ValueError, "configure(): buckets_per_block must be >= 1");
        return NULL;
    }
    Py_ssize_t off[RECORD_FIELDS], size[RECORD_FIELDS], record_end, end;
    if (read_record(record, off, size, &record_end) < 0 || check_slot(seq, payload, record_end, &end) < 0)
        return NULL;
    if (configured && (memcmp(off, rec_off, sizeof off) || memcmp(size, rec_size, sizeof size) || seq != seq_at
                       || payload != payload_at)) {
        PyErr_SetString(PyExc_ValueError, "configure(): the slot and record layout cannot change once set");
        return NULL;
    }
    struct { const char *name; PyObject **dst; } names[] = {
        {"route", &str_route_key}, {"tenant", &str_tenant_key}, {"request_id", &str_request_id_key},
        {"default_request_id", &str_default_request_id_key}, {"wsgi", &str_wsgi_key},
        {"unmatched", &str_unmatched}};
    enum { KEYS = sizeof names / sizeof names[0] };
    PyObject *found[KEYS] = {NULL};
    for (int k = 0; k < KEYS; k++) {
        PyObject *v = PyDict_GetItemString(keys, names[k].name);
        if (v == NULL || !PyUnicode_Check(v)) {
            for (int j = 0; j < k; j++)
                Py_DECREF(found[j]);
            PyErr_Format(PyExc_KeyError, "configure(): keys[%s] missing", names[k].name);
            return NULL;
        }
        Py_INCREF(v);  /* held: the next lookups may run code that changes the dict */
        found[k] = v;
    }
    bucket_scale = scale;
    min_seconds = least;
    block_width = block;
    memcpy(rec_off, off, sizeof off);
    memcpy(rec_size, size, sizeof size);
    seq_at = seq;
    payload_at = payload;
    slot_end = end;
    for (int k = 0; k < KEYS; k++)
        Py_XSETREF(*names[k].dst, found[k]);
    configured = 1;
    Py_RETURN_NONE;
}

/* bind(slab or None, combinations dict or None, recorder or None, on_idle or None) */
static PyObject *py_bind(PyObject *module, PyObject *args) {
    PyObject *slab, *combos, *rec, *idle;
    if (!PyArg_ParseTuple(args, "OOOO", &slab, &combos, &rec, &idle))
        return NULL;
    if (slab != Py_None && !PyObject_TypeCheck(slab, &SlabType)) {
        PyErr_SetString(PyExc_TypeError, "bind() takes a Slab or None");
        return NULL;
    }
    if (slab != Py_None && !slab_ready(slab))
        return NULL;
    if (combos != Py_None && !PyDict_Check(combos)) {
        PyErr_SetString(PyExc_TypeError, "combinations must be a dict");
        return NULL;
    }
#define SET(dst, v) do { PyObject *tmp_ = (v) == Py_None ? NULL : (v); Py_XINCREF(tmp_); Py_XSETREF(dst, tmp_); } while (0)
    SET(bound_slab, slab);
    SET(combinations, combos);
    forget_last_combination();
    forget_cells();
    SET(recorder, rec);
    SET(on_idle, idle);
#undef SET
    Py_RETURN_NONE;
}

/* RouteCapture(find): stands in for a Falcon app's router search (App._router_search, called as
 * find(path, req=req) once a request): returns what find returns, and first puts the matched route's
 * template (its 4th item) in req.env[ROUTE_KEY], or <unmatched> when no route matched, so that the WSGI
 * middleware's record names Falcon's template without a Falcon middleware (which cost about 2,800
 * instructions a request against some 200 here). A route without a template (a custom router's 3-tuple)
 * leaves the environ alone. */
typedef struct {
    PyObject_HEAD
    PyObject *find;
    vectorcallfunc vectorcall;
} RouteCapture;

static PyObject *capture_request_of(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    if (nargs >= 2)
        return args[1];
    if (kwnames == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++)
        if (PyTuple_GET_ITEM(kwnames, i) == str_req || PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, i), "req") == 0)
            return args[nargs + i];
    return NULL;
}

static void capture_note(PyObject *req, PyObject *route) {
    PyObject *template = NULL;
    if (route == Py_None)
        template = str_unmatched;
    else if (PyTuple_Check(route) && PyTuple_GET_SIZE(route) >= 4 && PyUnicode_Check(PyTuple_GET_ITEM(route, 3))
             && PyUnicode_GET_LENGTH(PyTuple_GET_ITEM(route, 3)))
        template = PyTuple_GET_ITEM(route, 3);
    if (template == NULL || str_route_key == NULL)
        return;
    PyObject *env = PyObject_GetAttr(req, str_env);
    if (env != NULL && PyDict_Check(env))
        PyDict_SetItem(env, str_route_key, template);
    Py_XDECREF(env);
    PyErr_Clear();  /* a request object of another shape: the route is then guessed from the path */
}

static PyObject *capture_vectorcall(RouteCapture *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    PyObject *route = PyObject_Vectorcall(self->find, args, nargsf, kwnames);
    if (route == NULL)
        return NULL;
    PyObject *req = capture_request_of(args, PyVectorcall_NARGS(nargsf), kwnames);
    if (req != NULL && req != Py_None)
        capture_note(req, route);
    return route;
}

static PyObject *capture_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    PyObject *find;
    if ((kw != NULL && PyDict_GET_SIZE(kw)) || !PyArg_UnpackTuple(args, "RouteCapture", 1, 1, &find))
        return NULL;
    if (!PyCallable_Check(find)) {
        PyErr_SetString(PyExc_TypeError, "RouteCapture(find): find must be the router's find method");
        return NULL;
    }
    RouteCapture *self = (RouteCapture *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    Py_INCREF(find);
    self->find = find;
    self->vectorcall = (vectorcallfunc)capture_vectorcall;
    return (PyObject *)self;
}

static int capture_traverse(RouteCapture *self, visitproc visit, void *arg) {
    Py_VISIT(self->find);
    return 0;
}

static int capture_clear(RouteCapture *self) {
    Py_CLEAR(self->find);
    return 0;
}

static void capture_dealloc(RouteCapture *self) {
    PyObject_GC_UnTrack(self);
    capture_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef capture_members[] = {
    {"find", T_OBJECT, offsetof(RouteCapture, find), READONLY, "the router's own find"},
    {NULL}};

static PyTypeObject RouteCaptureType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rockstar_mp._hotpath.RouteCapture",
    .tp_basicsize = sizeof(RouteCapture),
    .tp_dealloc = (destructor)capture_dealloc,
    .tp_vectorcall_offset = offsetof(RouteCapture, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "RouteCapture(find): a Falcon router search that notes the matched template in req.env.",
    .tp_traverse = (traverseproc)capture_traverse,
    .tp_clear = (inquiry)capture_clear,
    .tp_new = capture_new,
    .tp_members = capture_members,
};

/* The CPU thread sampler's wake (issue 15), defined in its own section at the end of this file. */
static PyObject *py_cpu_wake(PyObject *module, PyObject *args);

static PyMethodDef module_methods[] = {
    {"cpu_wake", py_cpu_wake, METH_VARARGS,
     "cpu_wake(signo, timeout, clocks, last_cpu, known, depth) -> (signalled, [(ident, cpu_ns, key, leaf "
     "frame or None), ...]): the CPU thread sampler's wait and tick (samplers.ThreadSampler._run_cpu)."},
    {"configure", py_configure, METH_VARARGS, "Constants from the layout and the sketch."},
    {"bind", py_bind, METH_VARARGS, "The slab, the recorder's caches and the idle callback."},
    {"forget_cells", py_forget_cells, METH_NOARGS,
     "Forget the status entries' resolved cells (the series moved: CellCache.clear calls it)."},
    {"record", py_record, METH_VARARGS, "One workload record (sketch cells and ring)."},
    {"hold_listeners", py_hold_listeners, METH_O,
     "Hold these listening sockets at the first held request (a gunicorn sync worker's)."},
    {"listeners_held", py_listeners_held, METH_NOARGS, "Whether the listeners hold."},
    {"trust_socket_layout", py_trust_socket_layout, METH_O,
     "Read the descriptor of standard sockets from their struct, once checked on this open socket."},
    {NULL}};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_hotpath",
                                        "The per-request path of rockstar-mp in C (optional).", -1,
                                        module_methods};

PyMODINIT_FUNC PyInit__hotpath(void) {
    if (PyType_Ready(&SlabType) < 0 || PyType_Ready(&RequestType) < 0 || PyType_Ready(&MiddlewareType) < 0
        || PyType_Ready(&AsgiSendType) < 0 || PyType_Ready(&AsgiMiddlewareType) < 0 || PyType_Ready(&AsgiCallType) < 0
        || PyType_Ready(&RouteCaptureType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
#define INTERN(var, s) if ((var = PyUnicode_InternFromString(s)) == NULL) return NULL
    INTERN(str_method_key, "REQUEST_METHOD");
    INTERN(str_path_key, "PATH_INFO");
    INTERN(str_socket_key, "gunicorn.socket");
    INTERN(str_other, "other");
    INTERN(str_500, "500");
    INTERN(str_status, "_status");
    INTERN(str_route, "_route");
    INTERN(str_combination, "_combination_tuple");
    INTERN(str_bucket, "_bucket_cells");
    INTERN(empty_str, "");
    INTERN(str_slash, "/");
    INTERN(str_type, "type");
    INTERN(str_status_key, "status");
    INTERN(str_body, "body");
    INTERN(str_more_body, "more_body");
    INTERN(str_start_type, "http.response.start");
    INTERN(str_body_type, "http.response.body");
    INTERN(str_scope_route, "route");
    INTERN(str_router, "router");
    INTERN(str_path, "path");
    INTERN(str_root_path, "root_path");
    INTERN(str_headers, "headers");
    INTERN(str_fastapi, "fastapi");
    INTERN(str_effective, "effective_route_context");
    INTERN(str_path_format, "path_format");
    INTERN(str_routes_attr, "routes");
    INTERN(str_path_template, "/{path}");
    INTERN(str_get, "get");
    INTERN(str_cells_of, "_cells_of");
    INTERN(str_route_of, "_route_of");
    INTERN(str_headers_of, "_headers_of");
    INTERN(str_method_scope, "method");
    INTERN(str_code_of, "_code_of");
    INTERN(str_env, "env");
    INTERN(str_req, "req");
    INTERN(str_http, "http");
    INTERN(str_not_http, "_not_http");
    INTERN(str_throw, "throw");
    INTERN(str_close, "close");
#undef INTERN
    if ((status_500 = PyLong_FromLong(500)) == NULL)
        return NULL;
    Py_INCREF(&SlabType);
    Py_INCREF(&MiddlewareType);
    Py_INCREF(&AsgiMiddlewareType);
    Py_INCREF(&RouteCaptureType);
    if (PyModule_AddObject(m, "Slab", (PyObject *)&SlabType) < 0
        || PyModule_AddObject(m, "RouteCapture", (PyObject *)&RouteCaptureType) < 0
        || PyModule_AddObject(m, "Middleware", (PyObject *)&MiddlewareType) < 0
        || PyModule_AddObject(m, "AsgiMiddleware", (PyObject *)&AsgiMiddlewareType) < 0)
        return NULL;
    return m;
}


/* == The CPU thread sampler's wake (issue 15) ==================================================
 *
 * rockstar_mp.profiling.samplers.ThreadSampler._run_cpu's wait and tick in one call; the Python path
 * (CpuPacer.wait then ThreadSampler._cpu_tick) is the reference and the fallback. Wait for the pacer's
 * signal (sigtimedwait) with the GIL released; then, with the GIL, read every sampled thread's CPU
 * clock, and walk the stack of each that used CPU since its previous tick, keyed as
 * frames.capture_key keys it, (id(code), lasti, ...) leaf first, through the public frame API of 3.11+
 * (PyInterpreterState_ThreadHead, PyThreadState_Next, PyThreadState_GetFrame, PyFrame_GetBack,
 * PyFrame_GetCode, PyFrame_GetLasti). Same figures as the Python path. The sampler's CPU per wake
 * (benchmarks/pprof_cost.py, figures 15a and 15c) is mostly the kernel's, the wake and the wait for the
 * GIL, so this saves a few microseconds of it, not more.
 */
#include <signal.h>

/* frames.capture_key of a thread's stack: a new tuple, leaf first, at most depth frames; *leaf gets a
 * new reference to the leaf frame (NULL if the thread has no Python frame: then the key is empty). */
static PyObject *stack_key(PyThreadState *tstate, int depth, PyFrameObject **leaf) {
    PyObject *items = PyList_New(0);
    PyFrameObject *frame = PyThreadState_GetFrame(tstate);
    *leaf = frame;
    Py_XINCREF(frame);
    while (items != NULL && frame != NULL && depth-- > 0) {
        PyCodeObject *code = PyFrame_GetCode(frame);
        PyObject *id = PyLong_FromVoidPtr(code);
        PyObject *lasti = PyLong_FromLong(PyFrame_GetLasti(frame));
        Py_DECREF(code);
        if (id == NULL || lasti == NULL || PyList_Append(items, id) < 0 || PyList_Append(items, lasti) < 0)
            Py_CLEAR(items);
        Py_XDECREF(id);
        Py_XDECREF(lasti);
        PyFrameObject *back = PyFrame_GetBack(frame);
        Py_DECREF(frame);
        frame = back;
    }
    Py_XDECREF(frame);
    if (items == NULL) {
        Py_CLEAR(*leaf);
        return NULL;
    }
    PyObject *key = PyList_AsTuple(items);
    Py_DECREF(items);
    if (key == NULL)
        Py_CLEAR(*leaf);
    return key;
}

/* Each used thread's (ident, cpu_ns, key, leaf frame or None): the frame only for a key not in known. */
static PyObject *used_stacks(PyObject *used, PyObject *known, int depth) {
    PyObject *out = PyList_New(0);
    PyInterpreterState *interp = PyThreadState_GetInterpreter(PyThreadState_Get());
    for (PyThreadState *t = PyInterpreterState_ThreadHead(interp); out != NULL && t != NULL;
         t = PyThreadState_Next(t)) {
        PyObject *ident = PyLong_FromUnsignedLong(t->thread_id);
        PyObject *cpu = ident ? PyDict_GetItemWithError(used, ident) : NULL; /* borrowed */
        if (cpu == NULL) {
            Py_XDECREF(ident);
            if (PyErr_Occurred())
                Py_CLEAR(out);
            continue;
        }
        PyFrameObject *leaf = NULL;
        PyObject *key = stack_key(t, depth, &leaf);
        int seen = key ? PyDict_Contains(known, key) : -1;
        PyObject *row = NULL;
        if (seen >= 0 && leaf != NULL)
            row = PyTuple_Pack(4, ident, cpu, key, seen ? Py_None : (PyObject *)leaf);
        if (seen < 0 || (leaf != NULL && (row == NULL || PyList_Append(out, row) < 0)))
            Py_CLEAR(out);
        Py_XDECREF(row);
        Py_XDECREF(key);
        Py_XDECREF((PyObject *)leaf);
        Py_DECREF(ident);
    }
    return out;
}

/* The CPU each clock's thread used since last_cpu (updated): {ident: ns} of those that used some. */
static PyObject *cpu_used(PyObject *idents, const int64_t *values, PyObject *last_cpu) {
    PyObject *used = PyDict_New();
    Py_ssize_t n = PyList_GET_SIZE(idents);
    for (Py_ssize_t i = 0; used != NULL && i < n; i++) {
        if (values[i] < 0)
            continue; /* the thread is gone */
        PyObject *ident = PyList_GET_ITEM(idents, i);
        PyObject *prev_obj = PyDict_GetItemWithError(last_cpu, ident);
        int64_t previous = prev_obj ? PyLong_AsLongLong(prev_obj) : 0; /* started during the profile */
        if (previous > values[i])
            previous = 0; /* a new thread under an ident that ended */
        PyObject *value = PyLong_FromLongLong(values[i]);
        PyObject *delta = values[i] > previous ? PyLong_FromLongLong(values[i] - previous) : NULL;
        if (value == NULL || PyErr_Occurred() || PyDict_SetItem(last_cpu, ident, value) < 0
            || (delta != NULL && PyDict_SetItem(used, ident, delta) < 0))
            Py_CLEAR(used);
        Py_XDECREF(value);
        Py_XDECREF(delta);
    }
    return used;
}

/* Wait for signo (at most timeout s) with the GIL released, then, with the GIL back, read every clock:
 * the moment sampled is when the stacks are read (ThreadSampler._charge_cpu says why). */
static int wait_and_read(int signo, double timeout, const clockid_t *clocks, int64_t *values, Py_ssize_t n) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signo);
    if (timeout < 0)
        timeout = 0;
    struct timespec limit = {(time_t)timeout, (long)((timeout - (double)(time_t)timeout) * 1e9)};
    int got;
    Py_BEGIN_ALLOW_THREADS
    got = sigtimedwait(&set, NULL, &limit);
    Py_END_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        struct timespec v;
        values[i] = clock_gettime(clocks[i], &v) == 0 ? (int64_t)v.tv_sec * 1000000000 + v.tv_nsec : -1;
    }
    return got == signo;
}

static PyObject *py_cpu_wake(PyObject *module, PyObject *args) {
    int signo, depth;
    double timeout;
    PyObject *clocks, *last_cpu, *known;
    if (!PyArg_ParseTuple(args, "idO!O!O!i", &signo, &timeout, &PyList_Type, &clocks, &PyDict_Type, &last_cpu,
                          &PyDict_Type, &known, &depth))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(clocks);
    PyObject *idents = PyList_New(n);
    clockid_t *ids = PyMem_Calloc(n ? n : 1, sizeof(clockid_t));
    int64_t *values = PyMem_Calloc(n ? n : 1, sizeof(int64_t));
    PyObject *result = NULL, *used = NULL, *stacks = NULL;
    if (idents == NULL || ids == NULL || values == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyList_GET_ITEM(clocks, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "clocks: a list of (ident, clock id) tuples");
            goto done;
        }
        ids[i] = (clockid_t)PyLong_AsLong(PyTuple_GET_ITEM(pair, 1));
        if (PyErr_Occurred())
            goto done;
        Py_INCREF(PyTuple_GET_ITEM(pair, 0));
        PyList_SET_ITEM(idents, i, PyTuple_GET_ITEM(pair, 0));
    }
    int signalled = wait_and_read(signo, timeout, ids, values, n);
    used = cpu_used(idents, values, last_cpu);
    if (used == NULL)
        goto done;
    stacks = PyDict_GET_SIZE(used) ? used_stacks(used, known, depth) : PyList_New(0);
    if (stacks != NULL)
        result = Py_BuildValue("(OO)", signalled ? Py_True : Py_False, stacks);
done:
    Py_XDECREF(stacks);
    Py_XDECREF(used);
    Py_XDECREF(idents);
    PyMem_Free(ids);
    PyMem_Free(values);
    return result;
}
