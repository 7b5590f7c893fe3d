/* rockstar_mp._threadprof: CPU profiles of sync and gthread workers, each thread sampled by itself.
 *
 * rockstar_mp/profiling/thread_signals.py drives it: it arms one POSIX timer per sampled thread on that
 * thread's CPU clock, sending SIGPROF to the thread itself (SIGEV_THREAD_ID), every 1/hz s of the CPU
 * time the thread uses. That signal only says the thread is busy: the handler here then swaps it for the
 * thread's wall-clock timer, kept on the thread's CPU clock by hand (sampled_now), so that the samples
 * fall at random moments of its CPU time (a CPU timer is checked at scheduler ticks, which a loaded
 * machine's slices can miss: thread_signals.py's docstring). track() makes both timers. The handler
 * runs on the sampled thread, at that moment, wherever it is (Python code, a C call holding the GIL or
 * not), so no sampler thread wakes and no GIL changes hands per sample: the thread sampler of
 * samplers.py cost 110-190 us of the worker's CPU per wake, mostly the kernel's wake and the GIL
 * hand-over, and saw a stack late; CPython runs a Python SIGPROF handler only at its next check, after
 * the C call it interrupted.
 *
 * What the handler does, all of it async-signal-safe (no allocation, no lock, no Python call):
 *   - finds the thread's own PyThreadState (PyGILState_GetThisThreadState: a pthread_getspecific; the
 *     thread clears it before it frees its state, and cannot do so while its handler runs);
 *   - reads the thread's CPU clock: the sample's weight is the CPU time since the thread's previous one;
 *   - copies the thread's frame chain, (code object address, lasti) leaf first, into a slot of a ring
 *     that the drain (with the GIL, in the profile's thread) empties: the addresses are named there.
 *
 * Why the frame reads are safe while the thread was interrupted anywhere: a frame the thread itself runs
 * lives in one of its data-stack chunks, which only the thread frees, after unlinking them from
 * tstate->datastack_chunk; a frame inside such a chunk is copied directly. Any other frame (a
 * generator's, or a popped frame's address left for a few instructions as the chunk under it is
 * unmapped) is copied with process_vm_readv on this process, which fails instead of faulting. A code
 * object's address is never dereferenced here.
 *
 * Bounds: the ring's capacity, the depth and the number of threads come from Python (start()), which
 * allocates them for the profile (about 1 MB) and stop() frees them once no handler runs; a
 * sample that finds the ring full, a thread not in the table, or a thread with no Python state is
 * counted (counters()), never written past a bound. CPython 3.11 only (the frame layout is the
 * interpreter's own, from its internal header): elsewhere start() raises and the thread sampler runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000 && defined(__linux__)
#define THREADPROF_SUPPORTED 1
#define Py_BUILD_CORE
#include "internal/pycore_frame.h"
#undef Py_BUILD_CORE
#else
#define THREADPROF_SUPPORTED 0
#endif

typedef struct {
    uintptr_t code; /* the code object's address: named by the drain, never read here */
    int32_t lasti;  /* as frame.f_lasti: bytes, -1 before the first instruction */
    int32_t unused;
} Frame;

typedef struct {
    _Atomic uint64_t ready; /* the ring index + 1 once the slot is written */
    long tid;
    int64_t cpu_ns;
    int32_t depth;
    int32_t cut; /* 1 if the chain ended at a frame that could not be read */
    Frame frames[];
} Sample;

typedef struct {
    _Atomic long tid; /* 0: free */
    int64_t last_cpu; /* written only by the thread's own handler once tracked */
    timer_t cpu;      /* on the thread's CPU clock: armed while it is idle, says when it is busy */
    timer_t wall;     /* on the wall clock: armed while it is busy (walling), its signals are the samples */
    int walling;      /* changed only by the thread's own handler once tracked */
    uint64_t seed;    /* the wall timer's gaps are random (xorshift) */
    int64_t due;      /* the wall timer's next expiry, CLOCK_MONOTONIC ns */
    int64_t target;   /* its CPU clock at the next sample: a random gap of CPU after the previous one */
    int64_t signalled_cpu; /* its CPU clock at the previous signal */
    int64_t signalled_at;  /* the monotonic clock then */
    int64_t paced_cpu, paced_wall; /* its CPU and the wall time over its last looks, each 3/4 of the one before */
    int64_t idle_since; /* the monotonic clock when wall signals began to find it idle, 0 if busy */
    int64_t look;     /* the wall gap while it is short of its target, doubled while it is idle */
} Tracked;

enum { SAMPLES, RING_FULL, UNTRACKED, NO_PYTHON, CUT_CHAINS, NO_CPU, WALL_STARTS, LOOKS, COUNTERS };
static const char *const counter_names[COUNTERS] = {
    "samples", "ring_full", "untracked", "no_python_state", "cut_chains", "no_cpu_used", "wall_starts", "looks"};
static _Atomic uint64_t counters[COUNTERS];
static _Atomic uint64_t lost_ns;    /* the CPU of samples the full ring dropped */
static _Atomic uint64_t handler_ns; /* the handlers' own time (monotonic clock, a vDSO read: no system call) */

static char *ring;
static size_t ring_capacity, sample_size;
static int max_depth;
static int64_t period_ns; /* 1/hz */
#define IDLE_SHARE 32 /* a thread that used less than 1/IDLE_SHARE of a period between two signals is idle */
#define IDLE_NS 1000000000LL /* idle this long, a thread goes back to its CPU timer */
#define MAX_LOOK 8 /* periods between two looks at an idle thread at most */
#define SLOW_SHARE 4 /* a thread that ran less than 1/SLOW_SHARE of the time over its last looks is slow... */
#define MAX_PACED 4  /* ...and is looked at again when its pace would reach its target, this many periods at most */
#define ON_TIME_NS 200000 /* a wall signal handled within this of its expiry did not wait for a core */
#define SLACK_NS 100000 /* a wall signal this close to the CPU target samples (the handler's own time) */
static _Atomic uint64_t ring_head; /* the next index a handler claims */
static _Atomic uint64_t ring_tail; /* the next index the drain reads */

static Tracked *tracked;
static int tracked_capacity;
static _Atomic int tracked_end; /* one past the highest place ever taken this profile: the scans stop there */

static _Atomic int enabled; /* a handler records only while set */
static _Atomic int active;  /* handlers running now: stop() waits for none */
static int running, running_signo;
static struct sigaction previous_action;

static int64_t timespec_ns(const struct timespec *t) { return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec; }

static Sample *slot_at(uint64_t index) { return (Sample *)(ring + (index % ring_capacity) * sample_size); }

#if THREADPROF_SUPPORTED
#define MAX_CHUNKS 16 /* data-stack chunks checked directly; frames in deeper ones take the careful read */
#define FRAME_HEAD offsetof(_PyInterpreterFrame, localsplus)

typedef struct {
    uintptr_t start, end;
} Range;

static int chunks_of(PyThreadState *tstate, Range *out) {
    int n = 0;
    for (_PyStackChunk *chunk = tstate->datastack_chunk; chunk != NULL && n < MAX_CHUNKS; chunk = chunk->previous) {
        out[n].start = (uintptr_t)chunk;
        out[n].end = (uintptr_t)chunk + chunk->size;
        n++;
    }
    return n;
}

/* Copy the head of the frame at address into copy: directly if it lies in a live chunk, else by a read
 * that fails instead of faulting. */
static int read_frame(uintptr_t address, _PyInterpreterFrame *copy, const Range *chunks, int n) {
    for (int i = 0; i < n; i++) {
        if (address >= chunks[i].start && address + FRAME_HEAD <= chunks[i].end) {
            memcpy(copy, (const void *)address, FRAME_HEAD);
            return 1;
        }
    }
    struct iovec local = {copy, FRAME_HEAD};
    struct iovec remote = {(void *)address, FRAME_HEAD};
    return process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == (ssize_t)FRAME_HEAD;
}

static int32_t lasti_of(const _PyInterpreterFrame *frame) {
    uintptr_t first = (uintptr_t)frame->f_code + offsetof(PyCodeObject, co_code_adaptive);
    uintptr_t previous = (uintptr_t)frame->prev_instr;
    if (previous < first || previous - first > (uintptr_t)INT32_MAX)
        return -1;
    return (int32_t)((previous - first) / sizeof(_Py_CODEUNIT)) * (int32_t)sizeof(_Py_CODEUNIT);
}

/* The thread's frames, leaf first, into sample->frames. */
static void walk(PyThreadState *tstate, Sample *sample) {
    Range chunks[MAX_CHUNKS];
    int n = chunks_of(tstate, chunks);
    _PyCFrame *cframe = tstate->cframe;
    uintptr_t address = cframe != NULL ? (uintptr_t)cframe->current_frame : 0;
    int depth = 0;
    sample->cut = 0;
    while (address != 0 && depth < max_depth) {
        _PyInterpreterFrame copy;
        if (!read_frame(address, &copy, chunks, n)) {
            sample->cut = 1;
            break;
        }
        sample->frames[depth].code = (uintptr_t)copy.f_code;
        sample->frames[depth].lasti = lasti_of(&copy);
        depth++;
        address = (uintptr_t)copy.previous;
    }
    sample->depth = depth;
}
#endif

static Tracked *tracked_thread(long tid) {
    int end = atomic_load_explicit(&tracked_end, memory_order_acquire);
    for (int i = 0; i < end; i++)
        if (atomic_load_explicit(&tracked[i].tid, memory_order_acquire) == tid)
            return &tracked[i];
    return NULL;
}

/* The thread a timer's signal is about: its place, which the timer carries as si_value (track() gave it),
 * checked against the running thread; a signal sent by anyone else is looked up by tid. */
static Tracked *signalled_thread(const siginfo_t *info, long *tid) {
    *tid = (long)syscall(SYS_gettid);
    if (info != NULL && info->si_code == SI_TIMER) {
        int value = info->si_value.sival_int, place = (value < 0 ? -value : value) - 1;
        if (place >= 0 && place < atomic_load_explicit(&tracked_end, memory_order_acquire)
            && atomic_load_explicit(&tracked[place].tid, memory_order_acquire) == *tid)
            return &tracked[place];
    }
    return tracked_thread(*tid);
}

static void set_timer(timer_t timer, int64_t first, int64_t interval) {
    struct itimerspec spec = {{interval / 1000000000, interval % 1000000000},
                              {first / 1000000000, first % 1000000000}};
    timer_settime(timer, 0, &spec, NULL);
}

/* A random gap of CPU to the next sample: from 1 ns to a period after the thread became busy (first),
 * else from half a period to one and a half. Drawn afresh each time, the samples fall where its CPU goes,
 * whatever the phase of the scheduler's ticks: a fixed period equal to the tick's held one phase for a
 * whole profile, which saw a Python loop's slices (ending at a system call, before the next tick) in 10 %
 * of the samples for 34 % of the CPU. */
static int64_t draw_gap(Tracked *thread, int first) {
    thread->seed ^= thread->seed << 13;
    thread->seed ^= thread->seed >> 7;
    thread->seed ^= thread->seed << 17;
    return first ? 1 + (int64_t)(thread->seed % (uint64_t)period_ns)
                 : period_ns / 2 + (int64_t)(thread->seed % (uint64_t)period_ns);
}

/* The wall timer set for when the thread reaches its CPU target, were it to run all the while, and at
 * least least_ns from now. */
static void arm_wall(Tracked *thread, int64_t cpu, int64_t now, int64_t least_ns) {
    int64_t delay = thread->target - cpu;
    if (delay < least_ns)
        delay = least_ns;
    thread->due = now + delay;
    set_timer(thread->wall, delay, 0);
}

/* Looked at every period again, its CPU timer off: it uses CPU. */
static void busy(Tracked *thread) {
    set_timer(thread->cpu, 0, 0);
    thread->paced_cpu = thread->paced_wall = 0;
    thread->idle_since = 0;
    thread->look = period_ns;
}

/* The wall gap to the next look at a slow thread, one that ran less than 1/SLOW_SHARE of the time over its
 * last looks (3 periods of them at least; this one came on time, so it was blocked, not waiting for a
 * core): when it would reach its target at that pace, MAX_PACED periods at most. Were it to run all the
 * while from now on, its sample would come late (by MAX_PACED - 1 periods of its CPU at most); looked at
 * every period, gthread's request threads took ten looks a sample. */
static int64_t paced_look(const Tracked *thread, int64_t cpu) {
    double paced = (double)(thread->target - cpu) * (double)thread->paced_wall / (double)thread->paced_cpu;
    return paced < (double)(MAX_PACED * period_ns) ? (int64_t)paced : MAX_PACED * period_ns;
}

/* Whether to sample the thread on this signal, its CPU clock reading cpu: a CPU timer kept exactly on
 * the wall clock, so that the samples fall at random moments of the thread's CPU time, however the
 * scheduler cut it into slices.
 *   - Its CPU timer's signal (it became busy; checked at a scheduler tick) is not a sample: it swaps the
 *     CPU timer for the wall timer and draws the CPU target of the first sample.
 *   - A wall signal samples if the thread reached its target (it ran all the while), else sets the wall
 *     timer again for the CPU still to go (it waited for a core, or slept), a look period from now at
 *     the least, or at a slow thread's pace (paced_look).
 *   - A wall signal handled on time (so it did not wait for a core) after next to no CPU since the
 *     previous one found the thread idle, and is no sample: the looks back off (1 to MAX_LOOK periods)
 *     with its CPU timer armed beside them, and after IDLE_NS idle the CPU timer alone remains, which
 *     costs an idle thread nothing. Not sooner: the CPU timer is checked at scheduler ticks, and a loaded
 *     machine's slices can miss them for a whole request that starts with a Python loop. */
static int sampled_now(Tracked *thread, const siginfo_t *info, int64_t cpu) {
    int from_wall = info != NULL && info->si_code == SI_TIMER && info->si_value.sival_int < 0;
    if (from_wall && !thread->walling)
        return 0; /* a signal of the timer just swapped out */
    if (!from_wall && thread->walling && thread->idle_since == 0)
        return 0; /* its CPU timer's, sent as it was swapped out */
    struct timespec clock;
    clock_gettime(CLOCK_MONOTONIC, &clock);
    int64_t now = timespec_ns(&clock), used = cpu - thread->signalled_cpu, since = now - thread->signalled_at;
    thread->signalled_cpu = cpu;
    thread->signalled_at = now;
    if (!from_wall) { /* busy, from idle: its CPU timer is armed only then */
        busy(thread);
        thread->walling = 1;
        thread->target = cpu + draw_gap(thread, 1);
        arm_wall(thread, cpu, now, 1000);
        atomic_fetch_add(&counters[WALL_STARTS], 1);
        return 0;
    }
    int on_time = now - thread->due <= ON_TIME_NS;
    int64_t least = thread->look;
    if (!on_time || used >= period_ns / IDLE_SHARE) { /* not idle */
        if (thread->idle_since != 0)
            busy(thread);
        thread->paced_cpu += used - thread->paced_cpu / 4;
        thread->paced_wall += since - thread->paced_wall / 4;
        if (cpu + SLACK_NS >= thread->target) {
            thread->target = cpu + draw_gap(thread, 0);
            arm_wall(thread, cpu, now, 1000);
            return 1;
        }
        if (on_time && thread->paced_wall >= 3 * period_ns && thread->paced_cpu * SLOW_SHARE < thread->paced_wall)
            least = paced_look(thread, cpu);
    } else if (thread->idle_since == 0) {
        thread->idle_since = now;
        set_timer(thread->cpu, period_ns, period_ns); /* it tells when the thread is busy again, too */
    } else if (now - thread->idle_since >= IDLE_NS) {
        thread->walling = 0;
        thread->idle_since = 0;
        set_timer(thread->wall, 0, 0); /* its CPU timer, armed since it became idle, stays */
        return 0; /* the CPU since its previous sample goes to its next one */
    } else if (thread->look < MAX_LOOK * period_ns) {
        thread->look *= 2;
    }
    /* A look wakes a thread blocked in a lock or a poll (one in a poll takes the GIL before it waits
     * again): paced_look halved gthread's looks. The wall timer's own wake-ups add to an idle thread's CPU,
     * not to a sample. */
    atomic_fetch_add(&counters[LOOKS], 1);
    arm_wall(thread, cpu, now, least);
    return 0;
}

static int claim(uint64_t *index) {
    uint64_t head = atomic_load(&ring_head);
    do {
        if (head - atomic_load_explicit(&ring_tail, memory_order_acquire) >= ring_capacity)
            return 0;
    } while (!atomic_compare_exchange_weak(&ring_head, &head, head + 1));
    *index = head;
    return 1;
}

static void take_sample(const siginfo_t *info) {
#if THREADPROF_SUPPORTED
    PyThreadState *tstate = PyGILState_GetThisThreadState();
    if (tstate == NULL) {
        atomic_fetch_add(&counters[NO_PYTHON], 1);
        return;
    }
    long tid;
    Tracked *thread = signalled_thread(info, &tid);
    if (thread == NULL) {
        atomic_fetch_add(&counters[UNTRACKED], 1);
        return;
    }
    struct timespec now;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now) != 0)
        return;
    int64_t cpu = timespec_ns(&now), used = cpu - thread->last_cpu;
    if (!sampled_now(thread, info, cpu))
        return; /* the CPU it used goes to its next sample */
    if (used <= 0) {
        atomic_fetch_add(&counters[NO_CPU], 1);
        return;
    }
    thread->last_cpu = cpu;
    uint64_t index;
    if (!claim(&index)) {
        atomic_fetch_add(&counters[RING_FULL], 1);
        atomic_fetch_add(&lost_ns, (uint64_t)used);
        return;
    }
    Sample *sample = slot_at(index);
    sample->tid = tid;
    sample->cpu_ns = used;
    walk(tstate, sample);
    if (sample->cut)
        atomic_fetch_add(&counters[CUT_CHAINS], 1);
    atomic_store_explicit(&sample->ready, index + 1, memory_order_release);
    atomic_fetch_add(&counters[SAMPLES], 1);
#endif
}

static void on_signal(int signo, siginfo_t *info, void *context) {
    (void)signo;
    (void)context;
    int saved = errno;
    struct timespec entered, left;
    atomic_fetch_add(&active, 1);
    if (atomic_load(&enabled)) {
        clock_gettime(CLOCK_MONOTONIC, &entered);
        take_sample(info);
        clock_gettime(CLOCK_MONOTONIC, &left);
        atomic_fetch_add(&handler_ns, (uint64_t)(timespec_ns(&left) - timespec_ns(&entered)));
    }
    atomic_fetch_sub(&active, 1);
    errno = saved;
}

/* A forked child has none of the parent's timers: give the signal back to whoever had it. */
static void after_fork_in_child(void) {
    if (running) {
        atomic_store(&enabled, 0);
        sigaction(running_signo, &previous_action, NULL);
        running = 0;
    }
}

static int careful_reads_work(void) {
    int64_t probe = 42, copy = 0;
    struct iovec local = {&copy, sizeof copy};
    struct iovec remote = {&probe, sizeof probe};
    return process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == (ssize_t)sizeof copy && copy == probe;
}

/* A new ring and thread table for a profile (those of a profile whose handler never finished, or of a
 * parent before the fork, are left to whoever may still hold them). */
static int allocate(Py_ssize_t capacity, int depth, int threads) {
    size_t size = sizeof(Sample) + (size_t)depth * sizeof(Frame);
    ring = PyMem_RawCalloc((size_t)capacity, size);
    tracked = PyMem_RawCalloc((size_t)threads, sizeof(Tracked));
    if (ring == NULL || tracked == NULL) {
        PyMem_RawFree(ring);
        PyMem_RawFree(tracked);
        ring = NULL;
        tracked = NULL;
        return -1;
    }
    ring_capacity = (size_t)capacity;
    sample_size = size;
    tracked_capacity = threads;
    return 0;
}

/* Free them once no handler can touch them: every handler checks enabled (cleared) after counting itself
 * in active, so none will once active is 0. */
static void release(void) {
    if (atomic_load(&active) == 0) {
        PyMem_RawFree(ring);
        PyMem_RawFree(tracked);
    }
    ring = NULL;
    tracked = NULL;
    tracked_capacity = 0;
    atomic_store(&tracked_end, 0);
}

/* A timer on clock that sends the profile's signal to thread tid with value (its place + 1: the CPU
 * timer; negated: the wall timer). 0, or -1 with errno. */
static int make_timer(clockid_t clock, long tid, int value, timer_t *timer) {
    struct sigevent event;
    memset(&event, 0, sizeof event);
    event.sigev_notify = SIGEV_THREAD_ID;
    event.sigev_signo = running_signo;
    event.sigev_value.sival_int = value;
    event._sigev_un._tid = (pid_t)tid;
    return timer_create(clock, &event, timer);
}

static void delete_timers(Tracked *thread) {
    timer_delete(thread->cpu);
    timer_delete(thread->wall);
}

static PyObject *py_start(PyObject *module, PyObject *args) {
    int signo, depth, threads;
    Py_ssize_t capacity;
    long long period;
    if (!PyArg_ParseTuple(args, "iniiL", &signo, &capacity, &depth, &threads, &period))
        return NULL;
    if (!THREADPROF_SUPPORTED) {
        PyErr_SetString(PyExc_OSError, "per-thread signal sampling needs CPython 3.11 on Linux");
        return NULL;
    }
    if (running) {
        PyErr_SetString(PyExc_RuntimeError, "the thread profiler is already running in this process");
        return NULL;
    }
    if (capacity < 1 || depth < 1 || threads < 1 || period < 1000) {
        PyErr_SetString(PyExc_ValueError, "capacity, depth and threads must be positive, the period 1 us or more");
        return NULL;
    }
    if (!careful_reads_work()) {
        PyErr_SetFromErrno(PyExc_OSError); /* process_vm_readv refused (a seccomp filter, say) */
        return NULL;
    }
    if (allocate(capacity, depth, threads) < 0)
        return PyErr_NoMemory();
    max_depth = depth;
    period_ns = period;
    atomic_store(&tracked_end, 0);
    for (int i = 0; i < COUNTERS; i++)
        atomic_store(&counters[i], 0);
    atomic_store(&lost_ns, 0);
    atomic_store(&handler_ns, 0);
    atomic_store(&ring_head, 0);
    atomic_store(&ring_tail, 0);
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_signal;
    action.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    if (sigaction(signo, &action, &previous_action) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        release();
        return NULL;
    }
    running = 1;
    running_signo = signo;
    atomic_store(&enabled, 1);
    Py_RETURN_NONE;
}

static PyObject *py_drain(PyObject *module, PyObject *unused);

static PyObject *py_stop(PyObject *module, PyObject *unused) {
    if (!running)
        return PyList_New(0);
    atomic_store(&enabled, 0);
    Py_BEGIN_ALLOW_THREADS
    /* A handler that saw enabled set finishes its few microseconds; bounded in case one never does. */
    struct timespec pause = {0, 100000};
    for (int i = 0; i < 10000 && atomic_load(&active) != 0; i++)
        nanosleep(&pause, NULL);
    Py_END_ALLOW_THREADS
    /* No handler arms a wall timer now: delete them (and their pending signals) before the signal goes back. */
    int end = atomic_load(&tracked_end);
    for (int i = 0; i < end; i++)
        if (atomic_load(&tracked[i].tid) != 0)
            delete_timers(&tracked[i]);
    sigaction(running_signo, &previous_action, NULL);
    running = 0;
    PyObject *rows = py_drain(module, NULL);
    release();
    return rows;
}

static PyObject *py_track(PyObject *module, PyObject *args) {
    long tid;
    int clock;
    if (!PyArg_ParseTuple(args, "li", &tid, &clock))
        return NULL;
    if (!running || tid <= 0)
        return PyLong_FromLong(0);
    Tracked *known = tracked_thread(tid);
    if (known != NULL)
        return PyLong_FromLong((long)(known - tracked) + 1);
    struct timespec now;
    if (clock_gettime((clockid_t)clock, &now) != 0)
        return PyLong_FromLong(0); /* the thread is gone */
    for (int i = 0; i < tracked_capacity; i++) {
        if (atomic_load(&tracked[i].tid) == 0) {
            Tracked *thread = &tracked[i];
            thread->last_cpu = thread->signalled_cpu = timespec_ns(&now);
            thread->walling = 0;
            thread->seed = (uint64_t)tid * 0x9E3779B97F4A7C15ull | 1;
            if (make_timer((clockid_t)clock, tid, i + 1, &thread->cpu) != 0)
                return PyLong_FromLong(0); /* the thread is gone, or no timer: not sampled */
            if (make_timer(CLOCK_MONOTONIC, tid, -(i + 1), &thread->wall) != 0) {
                timer_delete(thread->cpu);
                return PyLong_FromLong(0);
            }
            atomic_store_explicit(&thread->tid, tid, memory_order_release);
            set_timer(thread->cpu, period_ns, period_ns);
            if (i >= atomic_load(&tracked_end))
                atomic_store_explicit(&tracked_end, i + 1, memory_order_release);
            return PyLong_FromLong(i + 1);
        }
    }
    return PyLong_FromLong(0); /* the table is full: the caller counts the thread as unsampled */
}

static PyObject *py_untrack(PyObject *module, PyObject *args) {
    long tid;
    if (!PyArg_ParseTuple(args, "l", &tid))
        return NULL;
    if (tracked == NULL)
        Py_RETURN_NONE;
    Tracked *thread = running ? tracked_thread(tid) : NULL;
    if (thread != NULL) {
        atomic_store(&thread->tid, 0);
        delete_timers(thread); /* a signal already sent finds no thread at its place: counted */
    }
    Py_RETURN_NONE;
}

/* One sample as (tid, cpu_ns, (code address, lasti, ...) leaf first). */
static PyObject *sample_row(const Sample *sample) {
    PyObject *key = PyTuple_New(2 * (Py_ssize_t)sample->depth);
    for (int i = 0; key != NULL && i < sample->depth; i++) {
        PyObject *code = PyLong_FromSize_t(sample->frames[i].code);
        PyObject *lasti = PyLong_FromLong(sample->frames[i].lasti);
        if (code == NULL || lasti == NULL) {
            Py_XDECREF(code);
            Py_XDECREF(lasti);
            Py_CLEAR(key);
            break;
        }
        PyTuple_SET_ITEM(key, 2 * i, code);
        PyTuple_SET_ITEM(key, 2 * i + 1, lasti);
    }
    if (key == NULL)
        return NULL;
    return Py_BuildValue("(lLN)", sample->tid, (long long)sample->cpu_ns, key);
}

static PyObject *py_drain(PyObject *module, PyObject *unused) {
    PyObject *out = PyList_New(0);
    if (out == NULL || ring == NULL)
        return out;
    uint64_t tail = atomic_load(&ring_tail);
    while (tail < atomic_load(&ring_head)) {
        Sample *sample = slot_at(tail);
        if (atomic_load_explicit(&sample->ready, memory_order_acquire) != tail + 1)
            break; /* a handler is still writing it: the next drain takes it */
        PyObject *row = sample_row(sample);
        if (row == NULL || PyList_Append(out, row) < 0) {
            Py_XDECREF(row);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(row);
        tail++;
        atomic_store_explicit(&ring_tail, tail, memory_order_release);
    }
    return out;
}

static PyObject *py_counters(PyObject *module, PyObject *unused) {
    PyObject *out = PyDict_New();
    for (int i = 0; out != NULL && i < COUNTERS; i++) {
        PyObject *value = PyLong_FromUnsignedLongLong(atomic_load(&counters[i]));
        if (value == NULL || PyDict_SetItemString(out, counter_names[i], value) < 0)
            Py_CLEAR(out);
        Py_XDECREF(value);
    }
    const char *names[] = {"lost_ns", "handler_ns"};
    _Atomic uint64_t *values[] = {&lost_ns, &handler_ns};
    for (int i = 0; out != NULL && i < 2; i++) {
        PyObject *value = PyLong_FromUnsignedLongLong(atomic_load(values[i]));
        if (value == NULL || PyDict_SetItemString(out, names[i], value) < 0)
            Py_CLEAR(out);
        Py_XDECREF(value);
    }
    return out;
}

/* The live code object at a sampled address, or None. The address came from a frame the handler read, so
 * the object may have been freed since: its head is read carefully, and only a head whose type is code and
 * whose count is a count (a freed small object's first word is the allocator's next-free pointer; a freed
 * large one's type slot is the allocator's too) is taken. Called with the GIL: no object is being freed
 * meanwhile. A code object freed and another made at its address is taken as that one (one sample's leaf). */
static PyObject *py_code_at(PyObject *module, PyObject *arg) {
    size_t address = PyLong_AsSize_t(arg);
    if (address == (size_t)-1 && PyErr_Occurred())
        return NULL;
    PyObject head;
    struct iovec local = {&head, sizeof head};
    struct iovec remote = {(void *)address, sizeof head};
    if (address == 0 || process_vm_readv(getpid(), &local, 1, &remote, 1, 0) != (ssize_t)sizeof head)
        Py_RETURN_NONE;
    if (Py_TYPE(&head) != &PyCode_Type || Py_REFCNT(&head) <= 0 || Py_REFCNT(&head) > INT32_MAX)
        Py_RETURN_NONE;
    PyObject *code = (PyObject *)address;
    Py_INCREF(code);
    return code;
}

static PyMethodDef methods[] = {
    {"start", py_start, METH_VARARGS,
     "start(signo, capacity, depth, threads, period_ns): take over signo with the sampling handler (raises "
     "OSError where this interpreter or the system cannot)."},
    {"stop", py_stop, METH_NOARGS, "Give the signal back, wait for running handlers, and drain() a last time."},
    {"track", py_track, METH_VARARGS,
     "track(tid, cpu clock id) -> its place + 1: sample the thread tid from now, on two timers made for it "
     "(0: gone, no timer, or the table is full)."},
    {"untrack", py_untrack, METH_VARARGS, "untrack(tid): forget an ended thread, deleting its timers."},
    {"drain", py_drain, METH_NOARGS, "[(tid, cpu_ns, (code address, lasti, ...) leaf first), ...]"},
    {"code_at", py_code_at, METH_O, "code_at(address): the live code object there (a sample's frame), or None."},
    {"counters", py_counters, METH_NOARGS, "The handlers' counts since start(), lost_ns and handler_ns (their own time)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_threadprof", "Per-thread SIGPROF sampling (profiling/thread_signals.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__threadprof(void) {
    static int registered;
    if (!registered) {
        pthread_atfork(NULL, NULL, after_fork_in_child);
        registered = 1;
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module != NULL && PyModule_AddIntConstant(module, "SUPPORTED", THREADPROF_SUPPORTED) < 0)
        Py_CLEAR(module);
    return module;
}
