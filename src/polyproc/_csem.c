/* polyproc._csem: the fast path of polyproc's locks, in C (optional).
 *
 * One type, SemLock, over a process-shared glibc sem_t that lives in a heap
 * block (polyproc._shm.heap). The Python classes in polyproc._sync.locks
 * subclass it and add sharing (pickling) and reprs; acquire, release,
 * __enter__ and __exit__ are the C methods below, so `with lock:` is one C call
 * each way, as with the stdlib's _multiprocessing.SemLock.
 *
 *     _attach(sem_addr, owner_addr, maxvalue)
 *        owner_addr != 0: re-entrant (RLock). Two int64 words there, shared by
 *                         every process: the holder's native thread id and the
 *                         recursion depth; only the holder releases.
 *        maxvalue >= 0:   release refuses to go above it (Lock, BoundedSemaphore).
 *
 * GIL: the uncontended path (sem_trywait / sem_post) never releases it. A
 * blocking wait releases it around sem_wait / sem_clockwait only. In the main
 * thread the wait sleeps in slices of SLICE seconds and runs the signal
 * handlers between slices (and after EINTR), so Ctrl+C interrupts it even when
 * the kernel delivered SIGINT to another thread.
 *
 * polyproc._sync._sem.PySemLock is the same type written with ctypes; the two
 * must agree on every behaviour (tests/shared/test_semcore.py runs both).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define SLICE 0.1
/* How many times a blocking acquire polls before it sleeps in the kernel; see spin(). */
#ifndef SPIN_POLLS
#define SPIN_POLLS 200
#endif

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 30))
#define HAVE_CLOCKWAIT 1
#endif

/* Native thread id (gettid, as threading.get_native_id), cached per thread:
 * gettid is a real system call. The fork handler forgets the cache, since the
 * forking thread has a new id in the child. */
static __thread long tls_tid;
/* PyThread ident of the main thread: the one whose waits are sliced. */
static unsigned long main_ident;

static void
after_fork_child(void)
{
    tls_tid = 0;
    main_ident = PyThread_get_thread_ident();  /* the child's main thread is the forker */
}

static inline int64_t
my_tid(void)
{
    long t = tls_tid;
    if (t == 0) {
        t = tls_tid = (long)syscall(SYS_gettid);
    }
    return (int64_t)t;
}

static double
monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* One sleep on `sem` until `until` (monotonic seconds), the GIL released.
 * Returns 0 or an errno. */
static int
wait_until(sem_t *sem, double until)
{
    int res, err;
    struct timespec ts;
#ifndef HAVE_CLOCKWAIT
    until += (double)time(NULL) - monotonic();  /* sem_timedwait wants CLOCK_REALTIME */
#endif
    ts.tv_sec = (time_t)until;
    ts.tv_nsec = (long)((until - (double)ts.tv_sec) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec += 1;
        ts.tv_nsec -= 1000000000L;
    }
    Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_CLOCKWAIT
    res = sem_clockwait(sem, CLOCK_MONOTONIC, &ts);
#else
    res = sem_timedwait(sem, &ts);
#endif
    err = errno;
    Py_END_ALLOW_THREADS
    return res == 0 ? 0 : err;
}

/* Before sleeping, poll a little: locks guarding a few Python statements (a
 * Value's `+= 1`) are held for well under a microsecond, and a holder that sees
 * no sleeper releases with no system call, while one that has to wake a sleeper
 * pays a futex_wake and the sleeper a futex_wait plus a context switch. The
 * poll reads the count (sem_getvalue: a load, so the holder keeps its cache
 * line) and only tries to take it when it is free. Bounded to a few
 * microseconds, so a long-held lock costs nothing noticeable. 1 taken, 0 not. */
static int
spin(sem_t *sem)
{
    for (int i = 0; i < SPIN_POLLS; i++) {
        int value;
        CPU_RELAX();
        if (sem_getvalue(sem, &value) == 0 && value > 0 && sem_trywait(sem) == 0) {
            return 1;
        }
    }
    return 0;
}

/* The slow path: 1 taken, 0 timed out, -1 exception set. */
static int
wait_slow(sem_t *sem, PyObject *timeout)
{
    double deadline = INFINITY;
    if (timeout != Py_None) {
        double t = PyFloat_AsDouble(timeout);
        if (t == -1.0 && PyErr_Occurred()) {
            return -1;
        }
        if (t <= 0) {
            return sem_trywait(sem) == 0;  /* acquire(timeout=0): one more try, no spinning */
        }
        deadline = monotonic() + t;
    }
    if (spin(sem)) {
        return 1;
    }
    int sliced = PyThread_get_thread_ident() == main_ident;
    for (;;) {
        int err;
        if (isinf(deadline) && !sliced) {
            int res;
            Py_BEGIN_ALLOW_THREADS
            res = sem_wait(sem);
            err = errno;
            Py_END_ALLOW_THREADS
            if (res == 0) {
                err = 0;
            }
        }
        else {
            double now = monotonic();
            if (now >= deadline) {
                return sem_trywait(sem) == 0;
            }
            double until = sliced && now + SLICE < deadline ? now + SLICE : deadline;
            err = wait_until(sem, until);
        }
        if (err == 0) {
            return 1;
        }
        if (err != ETIMEDOUT && err != EINTR && err != EAGAIN) {
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (PyErr_CheckSignals() < 0) {  /* e.g. KeyboardInterrupt */
            return -1;
        }
    }
}

typedef struct {
    PyObject_HEAD
    sem_t *sem;
    int64_t *owner;  /* RLock: [holder's native tid or 0, depth]; NULL otherwise */
    long maxvalue;   /* -1: unbounded */
} SemLockObject;

static int
check_attached(SemLockObject *self)
{
    if (self->sem == NULL) {
        PyErr_SetString(PyExc_ValueError, "semaphore is not attached to shared memory");
        return -1;
    }
    return 0;
}

/* 1 taken, 0 not, -1 exception set. */
static int
do_acquire(SemLockObject *self, int block, PyObject *timeout)
{
    if (check_attached(self) < 0) {
        return -1;
    }
    int64_t *owner = self->owner;
    if (owner != NULL && __atomic_load_n(&owner[0], __ATOMIC_RELAXED) == my_tid()) {
        owner[1] += 1;
        return 1;
    }
    if (sem_trywait(self->sem) != 0) {
        if (errno != EAGAIN && errno != EINTR) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (!block) {
            return 0;
        }
        int r = wait_slow(self->sem, timeout);
        if (r <= 0) {
            return r;
        }
    }
    if (owner != NULL) {
        __atomic_store_n(&owner[0], my_tid(), __ATOMIC_RELAXED);
        owner[1] = 1;
    }
    return 1;
}

static PyObject *
semlock_acquire(SemLockObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *block_obj = Py_True, *timeout = Py_None;
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "acquire() takes at most 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (nargs > 0) {
        block_obj = args[0];
    }
    if (nargs > 1) {
        timeout = args[1];
    }
    if (kwnames != NULL) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, i);
            PyObject **slot;
            if (PyUnicode_CompareWithASCIIString(name, "block") == 0) {
                slot = &block_obj;
                if (nargs > 0) {
                    goto twice;
                }
            }
            else if (PyUnicode_CompareWithASCIIString(name, "timeout") == 0) {
                slot = &timeout;
                if (nargs > 1) {
                    goto twice;
                }
            }
            else {
                PyErr_Format(PyExc_TypeError,
                             "acquire() got an unexpected keyword argument '%U'", name);
                return NULL;
            }
            *slot = args[nargs + i];
            continue;
        twice:
            PyErr_Format(PyExc_TypeError, "acquire() got multiple values for argument '%U'", name);
            return NULL;
        }
    }
    int block = PyObject_IsTrue(block_obj);
    if (block < 0) {
        return NULL;
    }
    int r = do_acquire(self, block, timeout);
    if (r < 0) {
        return NULL;
    }
    return PyBool_FromLong(r);
}

static PyObject *
semlock_enter(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    int r = do_acquire(self, 1, Py_None);
    if (r < 0) {
        return NULL;
    }
    return PyBool_FromLong(r);
}

/* 0 released, -1 exception set. */
static int
do_release(SemLockObject *self)
{
    if (check_attached(self) < 0) {
        return -1;
    }
    int64_t *owner = self->owner;
    if (owner != NULL) {
        if (__atomic_load_n(&owner[0], __ATOMIC_RELAXED) != my_tid()) {
            PyErr_SetString(PyExc_AssertionError,
                            "attempt to release recursive lock not owned by thread");
            return -1;
        }
        if (owner[1] > 1) {
            owner[1] -= 1;
            return 0;
        }
        owner[1] = 0;
        __atomic_store_n(&owner[0], 0, __ATOMIC_RELAXED);  /* sem_post publishes it */
    }
    else if (self->maxvalue >= 0) {
        int value;
        if (sem_getvalue(self->sem, &value) != 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (value >= self->maxvalue) {
            PyErr_SetString(PyExc_ValueError, "semaphore or lock released too many times");
            return -1;
        }
    }
    if (sem_post(self->sem) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static PyObject *
semlock_release(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    if (do_release(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}


static PyObject *
semlock_exit(SemLockObject *self, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs))
{
    if (do_release(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
semlock_get_value(SemLockObject *self, PyObject *Py_UNUSED(ignored))
{
    int value;
    if (check_attached(self) < 0) {
        return NULL;
    }
    if (sem_getvalue(self->sem, &value) != 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(value < 0 ? 0 : value);  /* glibc never reports waiters; POSIX may */
}

static PyObject *
semlock_attach(SemLockObject *self, PyObject *args)
{
    unsigned long long sem_addr, owner_addr;
    long maxvalue;
    if (!PyArg_ParseTuple(args, "KKl:_attach", &sem_addr, &owner_addr, &maxvalue)) {
        return NULL;
    }
    if (sem_addr == 0) {
        PyErr_SetString(PyExc_ValueError, "sem_addr must not be 0");
        return NULL;
    }
    self->sem = (sem_t *)(uintptr_t)sem_addr;
    self->owner = (int64_t *)(uintptr_t)owner_addr;
    self->maxvalue = maxvalue < 0 ? -1 : maxvalue;
    Py_RETURN_NONE;
}

static PyMethodDef semlock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))semlock_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(block=True, timeout=None) -> bool"},
    {"release", (PyCFunction)semlock_release, METH_NOARGS, "release() -> None"},
    {"__enter__", (PyCFunction)semlock_enter, METH_NOARGS, "acquire(), blocking"},
    {"__exit__", (PyCFunction)(void (*)(void))semlock_exit, METH_FASTCALL, "release()"},
    {"get_value", (PyCFunction)semlock_get_value, METH_NOARGS, "the semaphore's count"},
    {"_attach", (PyCFunction)semlock_attach, METH_VARARGS,
     "_attach(sem_addr, owner_addr, maxvalue): point at a sem_t (and owner words) in shared memory"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SemLockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "polyproc._csem.SemLock",
    .tp_basicsize = sizeof(SemLockObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A process-shared sem_t in shared memory; see the module source.",
    .tp_methods = semlock_methods,
    .tp_new = PyType_GenericNew,
};

/* LockedAttr(name): a data descriptor for polyproc's Synchronized wrappers.
 * `wrapper.value` reads `wrapper._obj.value` with `wrapper._lock` held, and
 * assignment writes it so: what a Python property with `with self._lock:` does,
 * in one C call (a Value's `+= 1` under its lock spends most of its time in
 * these two accesses, with the lock held, so this shortens the critical
 * section that other processes wait on). A lock that is not a SemLock (any
 * object with acquire/release) goes through its methods. */
typedef struct {
    PyObject_HEAD
    PyObject *name;
} LockedAttrObject;

static PyObject *str_lock, *str_obj, *str_acquire, *str_release;

/* Take `lock`: 0 done, -1 exception set. */
static int
lock_take(PyObject *lock)
{
    if (PyObject_TypeCheck(lock, &SemLockType)) {
        return do_acquire((SemLockObject *)lock, 1, Py_None) < 0 ? -1 : 0;
    }
    PyObject *r = PyObject_CallMethodNoArgs(lock, str_acquire);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* Release `lock`, keeping an exception already set (the access's) over its own. */
static int
lock_give(PyObject *lock)
{
    PyObject *et, *ev, *tb;
    int res;
    PyErr_Fetch(&et, &ev, &tb);
    if (PyObject_TypeCheck(lock, &SemLockType)) {
        res = do_release((SemLockObject *)lock);
    }
    else {
        PyObject *r = PyObject_CallMethodNoArgs(lock, str_release);
        Py_XDECREF(r);
        res = r == NULL ? -1 : 0;
    }
    if (et != NULL) {
        if (res < 0) {
            PyErr_Clear();  /* the first error is the one to report */
        }
        PyErr_Restore(et, ev, tb);
        return -1;
    }
    return res;
}

/* Get (value == NULL and get) or set `inst._obj.<name>` under `inst._lock`. */
static PyObject *
locked_access(LockedAttrObject *self, PyObject *inst, PyObject *value, int get)
{
    PyObject *lock = PyObject_GetAttr(inst, str_lock);
    if (lock == NULL) {
        return NULL;
    }
    PyObject *obj = PyObject_GetAttr(inst, str_obj);
    if (obj == NULL || lock_take(lock) < 0) {
        Py_DECREF(lock);
        Py_XDECREF(obj);
        return NULL;
    }
    PyObject *result;
    if (get) {
        result = PyObject_GetAttr(obj, self->name);
    }
    else {
        result = PyObject_SetAttr(obj, self->name, value) < 0 ? NULL : Py_NewRef(Py_None);
    }
    if (lock_give(lock) < 0) {
        Py_CLEAR(result);
    }
    Py_DECREF(lock);
    Py_DECREF(obj);
    return result;
}

static PyObject *
lockedattr_get(PyObject *self, PyObject *inst, PyObject *Py_UNUSED(owner))
{
    if (inst == NULL || inst == Py_None) {
        return Py_NewRef(self);
    }
    return locked_access((LockedAttrObject *)self, inst, NULL, 1);
}

static int
lockedattr_set(PyObject *self, PyObject *inst, PyObject *value)
{
    PyObject *r = locked_access((LockedAttrObject *)self, inst, value, 0);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

static int
lockedattr_init(LockedAttrObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *name;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "LockedAttr() takes no keyword arguments");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "U:LockedAttr", &name)) {
        return -1;
    }
    Py_XSETREF(self->name, Py_NewRef(name));
    return 0;
}

static void
lockedattr_dealloc(LockedAttrObject *self)
{
    Py_XDECREF(self->name);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
lockedattr_repr(LockedAttrObject *self)
{
    return PyUnicode_FromFormat("LockedAttr(%R)", self->name ? self->name : Py_None);
}

static PyTypeObject LockedAttrType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "polyproc._csem.LockedAttr",
    .tp_basicsize = sizeof(LockedAttrObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "LockedAttr(name): inst.<attr> is inst._obj.<name>, read and written under inst._lock",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)lockedattr_init,
    .tp_dealloc = (destructor)lockedattr_dealloc,
    .tp_repr = (reprfunc)lockedattr_repr,
    .tp_descr_get = lockedattr_get,
    .tp_descr_set = lockedattr_set,
};

/* prctl(option, arg): what a new child asks of the kernel (PR_SET_PDEATHSIG,
   PR_SET_NAME) without importing ctypes, about 2 ms of every child's start. */
static PyObject *
csem_prctl(PyObject *Py_UNUSED(module), PyObject *args)
{
    int option;
    PyObject *arg;
    if (!PyArg_ParseTuple(args, "iO", &option, &arg)) {
        return NULL;
    }
    int rc;
    if (PyBytes_Check(arg)) {
        rc = prctl(option, (unsigned long)PyBytes_AS_STRING(arg), 0UL, 0UL, 0UL);
    }
    else {
        unsigned long value = PyLong_AsUnsignedLong(arg);
        if (value == (unsigned long)-1 && PyErr_Occurred()) {
            return NULL;
        }
        rc = prctl(option, value, 0UL, 0UL, 0UL);
    }
    if (rc < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}


/* fork_template(fd, other_end, parent_pid, firsts) -> (role, value)

   Fork a pool's template: a child that closes other_end (the parent's end of fd's
   socket pair, so that closing it there is our end-of-file), then waits, in C and
   before running any Python, until the stream socket fd has data; then it becomes Python
   again (the interpreter's after-fork work, PyOS_AfterFork_Child). On end-of-file, or if
   its parent is already gone, it _exits(0) having run no Python at all.

   firsts: a tuple of (status_w, pid_w, close_fds), one per first worker of the pool: the
   template forks each at once, in order, also in C (no Python runs in the template for
   them), writes each one's pid (8 bytes, little-endian; -errno if its fork failed) down
   its pid_w, closes its close_fds (that worker's channel ends and journal, not the
   template's to keep), and while parked reaps each that exits, writing its wait status
   (4 bytes) down its status_w. Worker k closes the pipes of every first worker and the
   close_fds of the ones forked after it (the template closed the earlier ones' before
   forking it): no worker holds another's channel.

   Returns, in the parent: (0, template pid); in the woken template: (1, ((pid, k), ...)
   for the first workers still running); in first worker k: (2, k).

   Why: the caller forks once (this template) where it would fork once per first worker,
   and goes on while the template forks them: a fork of a ~25 MB interpreter costs the
   forking process ~0.7-1 ms of CPU and the pages it touches after it copy-on-write
   faults (issue 11). Forked by os.fork, the template would also have run the
   interpreter's after-fork work at birth (~0.7 ms of CPU, ~230 faults) before it could
   fork a worker. Parked, it costs ~20 faults until the pool's first request, which most
   pools never send. Signals that arrive meanwhile only set Python's flags, which
   PyOS_AfterFork_Child clears. */
static void
put_le(int fd, long long value, int size)
{
    unsigned char buf[8];
    for (int i = 0; i < size; i++) {
        buf[i] = (unsigned char)((unsigned long long)value >> (8 * i));
    }
    ssize_t done = 0;
    while (done < size) {
        ssize_t n = write(fd, buf + done, (size_t)(size - done));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return; /* the reader is gone: nothing to tell */
        }
        done += n;
    }
}

enum { MAX_FIRSTS = 64, MAX_CLOSE = 8 };

struct first_worker {
    int status_w, pid_w, nclose;
    int close_fds[MAX_CLOSE];
    pid_t pid;    /* > 0 while it runs (not yet reaped) */
    int pidfd;    /* -1 if none */
};

/* The byte a pool sends a parked template to end it (template.py, ``Template.shut``): it
   kills its first workers still running, reaps each and writes its status down its pipe,
   then exits. The pool sends it as it starts terminating, so the template's end and its
   workers' overlap, and each worker's status still comes from its reaper, once it is dead
   (a SIGKILL instead ended the template first, and the pool waited for it after the
   workers: ~0.7 ms more per pool's end). A first request starts with another byte. */
enum { TEMPLATE_END = 'X' };

/* Reap first worker w if it has exited (options: WNOHANG, or 0 to wait for it): its
   status down its pipe, its pipe and pidfd closed. 1 if it was reaped. */
static int
reap_first(struct first_worker *w, int options)
{
    int status;
    pid_t got;
    do {
        got = waitpid(w->pid, &status, options);
    } while (got < 0 && errno == EINTR);
    if (got != w->pid) {
        return 0;
    }
    put_le(w->status_w, status, 4);
    close(w->status_w);
    if (w->pidfd >= 0) {
        close(w->pidfd);
    }
    w->pid = 0;
    w->pidfd = -1;
    return 1;
}

static void
end_parked(struct first_worker *w, Py_ssize_t nfirst)
{
    for (Py_ssize_t k = 0; k < nfirst; k++) {
        if (w[k].pid > 0) {
            kill(w[k].pid, SIGKILL);
        }
    }
    for (Py_ssize_t k = 0; k < nfirst; k++) {
        if (w[k].pid > 0) {
            reap_first(&w[k], 0);
        }
    }
    _exit(0); /* closes every pipe: a worker not reaped reads as killed */
}

static PyObject *
csem_fork_template(PyObject *Py_UNUSED(module), PyObject *args)
{
    int fd, other_end;
    long parent;
    PyObject *firsts_arg;
    if (!PyArg_ParseTuple(args, "iilO!", &fd, &other_end, &parent, &PyTuple_Type, &firsts_arg)) {
        return NULL;
    }
    Py_ssize_t nfirst = PyTuple_GET_SIZE(firsts_arg);
    if (nfirst > MAX_FIRSTS) {
        PyErr_SetString(PyExc_ValueError, "fork_template: too many first workers");
        return NULL;
    }
    struct first_worker *w = PyMem_Calloc((size_t)(nfirst > 0 ? nfirst : 1), sizeof(*w));
    if (w == NULL) {
        return PyErr_NoMemory();
    }
    for (Py_ssize_t k = 0; k < nfirst; k++) {
        PyObject *close_fds;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(firsts_arg, k), "iiO!", &w[k].status_w,
                              &w[k].pid_w, &PyTuple_Type, &close_fds)) {
            PyMem_Free(w);
            return NULL;
        }
        Py_ssize_t nclose = PyTuple_GET_SIZE(close_fds);
        if (nclose > MAX_CLOSE) {
            PyMem_Free(w);
            PyErr_SetString(PyExc_ValueError, "fork_template: too many fds to close");
            return NULL;
        }
        w[k].nclose = (int)nclose;
        for (Py_ssize_t i = 0; i < nclose; i++) {
            w[k].close_fds[i] = (int)PyLong_AsLong(PyTuple_GET_ITEM(close_fds, i));
            if (w[k].close_fds[i] == -1 && PyErr_Occurred()) {
                PyMem_Free(w);
                return NULL;
            }
        }
        w[k].pidfd = -1;
    }
    if (PySys_Audit("os.fork", NULL) < 0) {
        PyMem_Free(w);
        return NULL;
    }
    PyOS_BeforeFork();
    pid_t pid = fork();
    int saved_errno = errno;
    if (pid != 0) {
        PyOS_AfterFork_Parent();
        PyMem_Free(w);
        if (pid < 0) {
            errno = saved_errno;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        return Py_BuildValue("(il)", 0, (long)pid);
    }
    /* The template. */
    close(other_end);
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0UL, 0UL, 0UL);
    if (getppid() != (pid_t)parent) {
        _exit(0);
    }
    pid_t me = getpid();
    int live = 0, polled_without_pidfd = 0;
    for (Py_ssize_t k = 0; k < nfirst; k++) {
        pid_t child = fork();
        if (child == 0) {
            close(fd);
            for (Py_ssize_t j = 0; j < nfirst; j++) {
                close(w[j].status_w);
                close(w[j].pid_w);
                for (int i = 0; j > k && i < w[j].nclose; i++) {
                    close(w[j].close_fds[i]);
                }
            }
            prctl(PR_SET_PDEATHSIG, SIGKILL, 0UL, 0UL, 0UL);
            if (getppid() != me) {
                _exit(70);
            }
            PyOS_AfterFork_Child();
            PyMem_Free(w);
            return Py_BuildValue("(in)", 2, k);
        }
        for (int i = 0; i < w[k].nclose; i++) {
            close(w[k].close_fds[i]);
        }
        put_le(w[k].pid_w, child > 0 ? (long long)child : -(long long)errno, 8);
        close(w[k].pid_w);
        if (child > 0) {
            w[k].pid = child;
            w[k].pidfd = (int)syscall(SYS_pidfd_open, child, 0);
            polled_without_pidfd |= w[k].pidfd < 0;
            live++;
        }
        else {
            close(w[k].status_w); /* no worker: its status pipe ends, which says it died */
        }
    }
    struct pollfd p[1 + MAX_FIRSTS];
    int slot_of[1 + MAX_FIRSTS];
    for (;;) {
        int n = 0;
        p[n].fd = fd;
        p[n].events = POLLIN;
        p[n].revents = 0;
        n++;
        for (Py_ssize_t k = 0; k < nfirst; k++) {
            if (w[k].pid > 0 && w[k].pidfd >= 0) {
                p[n].fd = w[k].pidfd;
                p[n].events = POLLIN;
                p[n].revents = 0;
                slot_of[n] = (int)k;
                n++;
            }
        }
        int got = poll(p, (nfds_t)n, live > 0 && polled_without_pidfd ? 100 : -1);
        if (got < 0) {
            if (errno == EINTR) {
                continue;
            }
            _exit(1);
        }
        for (Py_ssize_t k = 0; k < nfirst && live > 0; k++) {
            if (w[k].pid <= 0) {
                continue;
            }
            int fired = w[k].pidfd < 0;
            for (int i = 1; i < n && !fired; i++) {
                fired = slot_of[i] == (int)k && p[i].revents;
            }
            if (!fired) {
                continue;
            }
            live -= reap_first(&w[k], w[k].pidfd < 0 ? WNOHANG : 0);
        }
        if (p[0].revents) {
            char c;
            ssize_t r = recv(fd, &c, 1, MSG_PEEK);
            if (r > 0 && c == TEMPLATE_END) {
                end_parked(w, nfirst);
            }
            if (r > 0) {
                break;
            }
            if (r < 0 && (errno == EINTR || errno == EAGAIN)) {
                continue;
            }
            _exit(0); /* end-of-file: the pool ended without a request */
        }
    }
    long run_pid[MAX_FIRSTS];
    Py_ssize_t run_k[MAX_FIRSTS];
    int nrun = 0;
    for (Py_ssize_t k = 0; k < nfirst; k++) {
        if (w[k].pidfd >= 0) {
            close(w[k].pidfd);
        }
        if (w[k].pid > 0) {
            run_pid[nrun] = (long)w[k].pid;
            run_k[nrun++] = k;
        }
    }
    PyOS_AfterFork_Child();
    PyMem_Free(w);
    PyObject *running = PyTuple_New(nrun);
    for (int i = 0; running != NULL && i < nrun; i++) {
        PyObject *item = Py_BuildValue("(ln)", run_pid[i], run_k[i]);
        if (item == NULL) {
            Py_CLEAR(running);
            break;
        }
        PyTuple_SET_ITEM(running, i, item);
    }
    if (running == NULL) {
        return NULL;
    }
    return Py_BuildValue("(iN)", 1, running);
}


/* -- the pool journal's commit loop (polyproc/_pool/journal.py, Journal._span) ----------
 *
 * run_scalars(fn, star, items, j, stop, journal, tags_at, vals_at, started_word, unset)
 *     -> (j, value, raised)
 *
 * Calls fn on items[j:stop] (fn(a), or fn(*a) when star and a is a tuple), storing j in
 * the header's STARTED word before each call and committing each int, float, None or
 * bool result in the journal buffer exactly as Journal._span does in Python (an int is
 * one store into its int64 slot; a float the PENDING tag, its slot, its tag; None/True/
 * False the tag).
 * Returns at the end, (stop, None, False); at the first result it does not commit,
 * (j, value, False); or at the first exception, (j, exception, True). The caller commits
 * that one in Python and calls again from j + 1. The loop in C is the point: the Python
 * loop costs ~55 ns per tiny task on the reference VM, the whole gap to the stdlib's
 * Pool.map (docs/pool.md).
 */
enum { J_FLOAT = 2, J_NONE = 3, J_TRUE = 4, J_FALSE = 5, J_PENDING = 10 };

/* Stores into the journal stay in program order: a worker is killed between any two. */
#define J_ORDER() __atomic_signal_fence(__ATOMIC_SEQ_CST)

static PyObject *
csem_run_scalars(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "run_scalars() takes 10 arguments");
        return NULL;
    }
    PyObject *fn = args[0];
    int star = PyObject_IsTrue(args[1]);
    PyObject *items = args[2];
    if (star < 0) {
        return NULL;
    }
    if (!PyList_CheckExact(items)) {
        PyErr_SetString(PyExc_TypeError, "run_scalars() needs a list of items");
        return NULL;
    }
    Py_ssize_t j = PyLong_AsSsize_t(args[3]);
    Py_ssize_t stop = PyLong_AsSsize_t(args[4]);
    Py_ssize_t tags_at = PyLong_AsSsize_t(args[6]);
    Py_ssize_t vals_at = PyLong_AsSsize_t(args[7]);
    Py_ssize_t started = PyLong_AsSsize_t(args[8]);
    long long unset = PyLong_AsLongLong(args[9]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[5], &view, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    if (j < 0 || stop < j || tags_at < 0 || vals_at < 0 || started < 0
        || (started + 1) * 8 > view.len || tags_at + stop > view.len
        || vals_at + stop * 8 > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "run_scalars(): the journal is too small");
        return NULL;
    }
    char *base = (char *)view.buf;
    unsigned char *tags = (unsigned char *)base + tags_at;
    char *vals = base + vals_at;
    PyObject *value = NULL;
    int raised = 0;
    for (; j < stop && j < PyList_GET_SIZE(items); j++) {
        long long word = (long long)j;
        memcpy(base + started * 8, &word, 8);
        PyObject *a = PyList_GET_ITEM(items, j);
        Py_INCREF(a);
        PyObject *v;
        if (star && PyTuple_CheckExact(a)) {
            v = PyObject_Call(fn, a, NULL);
        }
        else if (star) {
            PyObject *t = PySequence_Tuple(a);
            v = t == NULL ? NULL : PyObject_Call(fn, t, NULL);
            Py_XDECREF(t);
        }
        else {
            v = PyObject_CallOneArg(fn, a);
        }
        Py_DECREF(a);
        if (v == NULL) {
            PyObject *type, *val, *tb;
            PyErr_Fetch(&type, &val, &tb);
            PyErr_NormalizeException(&type, &val, &tb);
            if (tb != NULL && val != NULL) {
                PyException_SetTraceback(val, tb);
            }
            Py_XDECREF(type);
            Py_XDECREF(tb);
            value = val != NULL ? val : Py_NewRef(Py_None);
            raised = 1;
            break;
        }
        if (PyLong_CheckExact(v)) {
            int overflow = 0;
            long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
            if (!overflow && x != unset && !(x == -1 && PyErr_Occurred())) {
                memcpy(vals + j * 8, &x, 8);
                Py_DECREF(v);
                continue;
            }
            PyErr_Clear();
        }
        else if (PyFloat_CheckExact(v)) {
            double d = PyFloat_AS_DOUBLE(v);
            /* PENDING first: tag 0 and the float's bits would read as a committed int. */
            tags[j] = J_PENDING;
            J_ORDER();
            memcpy(vals + j * 8, &d, 8);
            J_ORDER();
            tags[j] = J_FLOAT;
            Py_DECREF(v);
            continue;
        }
        else if (v == Py_None) {
            tags[j] = J_NONE;
            Py_DECREF(v);
            continue;
        }
        else if (PyBool_Check(v)) {
            tags[j] = v == Py_True ? J_TRUE : J_FALSE;
            Py_DECREF(v);
            continue;
        }
        value = v;  /* not a scalar: the caller commits it */
        break;
    }
    PyBuffer_Release(&view);
    if (value == NULL) {
        value = Py_NewRef(Py_None);
    }
    PyObject *out = Py_BuildValue("(nNO)", j, value, raised ? Py_True : Py_False);
    return out;
}

static PyMethodDef csem_functions[] = {
    {"prctl", csem_prctl, METH_VARARGS, "prctl(option, int_or_bytes) -> None"},
    {"fork_template", csem_fork_template, METH_VARARGS,
     "fork_template(fd, other_end, parent_pid, firsts) -> (role, value)"},
    {"run_scalars", (PyCFunction)(void (*)(void))csem_run_scalars, METH_FASTCALL,
     "run_scalars(fn, star, items, j, stop, journal, tags_at, vals_at, started_word, unset)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef csem_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "polyproc._csem",
    .m_doc = "Fast path for polyproc._sync: a process-shared sem_t driven from C.",
    .m_size = -1,
    .m_methods = csem_functions,
};

static int
find_main_ident(void)
{
    PyObject *threading = PyImport_ImportModule("threading");
    if (threading == NULL) {
        return -1;
    }
    PyObject *main = PyObject_CallMethod(threading, "main_thread", NULL);
    Py_DECREF(threading);
    if (main == NULL) {
        return -1;
    }
    PyObject *ident = PyObject_GetAttrString(main, "ident");
    Py_DECREF(main);
    if (ident == NULL) {
        return -1;
    }
    main_ident = PyLong_AsUnsignedLong(ident);
    Py_DECREF(ident);
    return PyErr_Occurred() ? -1 : 0;
}

PyMODINIT_FUNC
PyInit__csem(void)
{
    static int atfork_done;
    if (find_main_ident() < 0) {
        return NULL;
    }
    if (!atfork_done) {
        if (pthread_atfork(NULL, NULL, after_fork_child) != 0) {
            PyErr_SetString(PyExc_RuntimeError, "pthread_atfork failed");
            return NULL;
        }
        atfork_done = 1;
    }
    if (PyType_Ready(&SemLockType) < 0 || PyType_Ready(&LockedAttrType) < 0) {
        return NULL;
    }
    if ((str_lock = PyUnicode_InternFromString("_lock")) == NULL
        || (str_obj = PyUnicode_InternFromString("_obj")) == NULL
        || (str_acquire = PyUnicode_InternFromString("acquire")) == NULL
        || (str_release = PyUnicode_InternFromString("release")) == NULL) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&csem_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "SemLock", (PyObject *)&SemLockType) < 0
        || PyModule_AddObjectRef(m, "LockedAttr", (PyObject *)&LockedAttrType) < 0
        || PyModule_AddIntConstant(m, "SEM_SIZE", (long)sizeof(sem_t)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
