/*
 * The steady state of a lock-step TFTP download, in C: wait for the ACK of the block in
 * flight, answer it with the next block, read the one after it; return to Python for
 * anything else. Used by a download in a process of its own (netsvc/tftp/lockstep.py has
 * the contract and the reasons; netsvc/tftp/downloader.py the loop around it).
 *
 * Why C: in CPython the engine's per-block work costs about as much CPU as the kernel's
 * (recv, send, waking the client), and with 50 clients on two CPUs that CPU is the time.
 *
 * Everything here mirrors the Python code it stands in for, which stays the reference:
 * RetransmitTimer.sample (netsvc/tftp/engine.py) for the timer, Spinner and IdleCpuCheck
 * (netsvc/spin.py) for polling before sleeping (only while a CPU is free), drive_download's
 * wait for the socket timeout. Tests check the timer arithmetic against RetransmitTimer,
 * the /proc/loadavg reading against running_tasks, whole downloads (polling or not)
 * against the Python loop, and that both loops poll only while the check says a CPU is
 * free (tests/test_tftp_lockstep.py).
 */
#define _GNU_SOURCE /* sendmmsg, sched_getcpu, cpu_set_t */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* Why pump() returned (netsvc.tftp.lockstep.Reason has the same values); run() also
 * returns INTERRUPTED: a signal arrived, for Python's handlers to run. */
enum {
    REASON_DATAGRAM = 0,
    REASON_WAKE = 1,
    REASON_READ = 2,
    REASON_REFUSED = 3,
    INTERRUPTED = -1
};
/* What spin_recv and sleep_recv return besides a length. */
enum { NOTHING = -1, SIGNALLED = -2, REFUSED = -3 };

#define RECV_LIMIT 1024         /* as drive_download: an ACK is 4 bytes, ERRORs are short */
#define LONGEST_WAIT_MS 60000   /* drive_download's _LONGEST_WAIT_MS */
#define IDLE_CPU_INTERVAL 0.010 /* netsvc.spin.IDLE_CPU_INTERVAL */
#define IDLE_CPU_PATH_LIMIT 256
#define READ_AHEAD 65536                /* bytes per pread (read_block) */
#define READ_AHEAD_LARGEST_BLKSIZE 16384 /* above it, a block per pread: few blocks */
#define OPCODE_DATA 3
#define OPCODE_ACK 4

typedef struct {
    /* in */
    int sock, file, blksize;
    long long size;
    double rto_min, rto_max, stop_at, spin_limit;
    long spin_misses_allowed, spin_longest_pause;
    /* in and out */
    long long block, position;
    double sent_at, srtt, rttvar, rto;
    int has_srtt, precise_wait;
    long waiting_ms, spin_misses, spin_pause, spin_next_pause;
    /* netsvc.tftp.colocate.ClientCpu: wanted, countdown; and CHECK_EVERY */
    int follow_client_cpu;
    long follow_countdown, follow_every;
    int follow_cpu; /* where the last check left this process (-1: none; for tests) */
    /* IdleCpuCheck: its file ("": no check), CPU count, last answer and when it was read */
    char idle_cpu_path[IDLE_CPU_PATH_LIMIT];
    long idle_cpu_count;
    double idle_cpu_checked_at;
    int idle_cpu_verdict;
    /* out */
    long acked;
    double last_ack_at;
    /* The file read ahead (read_block): `ahead_length` bytes from offset `ahead_start`,
     * in `ahead` (NULL: each block is read on its own). Owned by pump(). */
    unsigned char *ahead;
    size_t ahead_capacity, ahead_length;
    long long ahead_start;
} Pump;

static double monotonic_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* time.monotonic()'s clock */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* RetransmitTimer.sample: RFC 6298 arithmetic, clamped to [rto_min, rto_max]. */
static void timer_sample(Pump *p, double rtt)
{
    if (rtt < 0.0)
        rtt = 0.0;
    if (!p->has_srtt) {
        p->srtt = rtt;
        p->rttvar = rtt / 2;
        p->has_srtt = 1;
    } else {
        double delta = p->srtt - rtt;
        p->rttvar = 0.75 * p->rttvar + 0.25 * (delta >= 0.0 ? delta : -delta);
        p->srtt = 0.875 * p->srtt + 0.125 * rtt;
    }
    double rto = p->srtt + 4 * p->rttvar;
    if (rto < p->rto_min)
        rto = p->rto_min;
    if (rto > p->rto_max)
        rto = p->rto_max;
    p->rto = rto;
}

/* netsvc.spin.running_tasks: the running-task count of a /proc/loadavg text
 * ("0.52 0.58 0.59 3/467 12345": 3), -1 for anything else. */
static long running_tasks(const char *text)
{
    const char *c = text;
    for (int field = 0; field < 4; field++) {
        while (*c == ' ' || *c == '\t' || *c == '\n')
            c++;
        if (field == 3)
            break;
        if (*c == 0)
            return -1;
        while (*c != 0 && *c != ' ' && *c != '\t' && *c != '\n')
            c++;
    }
    if (*c < '0' || *c > '9')
        return -1;
    long count = 0;
    int digits = 0;
    while (*c >= '0' && *c <= '9') {
        if (++digits > 9)
            return -1;
        count = count * 10 + (*c++ - '0');
    }
    return *c == '/' ? count : -1;
}

/* IdleCpuCheck.__call__: whether a CPU is free for polling (at most as many running
 * tasks as CPUs); the file is read at most every IDLE_CPU_INTERVAL, and an unreadable
 * one means yes. */
static int idle_cpu(Pump *p, double now)
{
    if (p->idle_cpu_path[0] == 0)
        return 1;
    if (now - p->idle_cpu_checked_at < IDLE_CPU_INTERVAL)
        return p->idle_cpu_verdict;
    p->idle_cpu_checked_at = now;
    char text[128];
    ssize_t n = -1;
    int fd = open(p->idle_cpu_path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        n = read(fd, text, sizeof text - 1);
        close(fd);
    }
    long running = -1;
    if (n > 0) {
        text[n] = 0;
        running = running_tasks(text);
    }
    p->idle_cpu_verdict = running < 0 || running <= p->idle_cpu_count;
    return p->idle_cpu_verdict;
}

/* Spinner.budget: seconds this wait may poll (0 while pausing after misses). */
static double spin_budget(Pump *p, double now)
{
    if (p->spin_pause) {
        p->spin_pause--;
        return 0.0;
    }
    if (!idle_cpu(p, now))
        return 0.0;
    return p->spin_limit;
}

/* Spinner.caught and Spinner.missed. */
static void spin_result(Pump *p, int caught)
{
    if (caught) {
        p->spin_misses = 0;
        p->spin_next_pause = 16;
        return;
    }
    if (++p->spin_misses >= p->spin_misses_allowed) {
        p->spin_misses = 0;
        p->spin_pause = p->spin_next_pause;
        p->spin_next_pause = p->spin_next_pause * 2 < p->spin_longest_pause
                                 ? p->spin_next_pause * 2
                                 : p->spin_longest_pause;
    }
}

/* Poll without sleeping for up to `budget` seconds: the datagram's length, NOTHING, or
 * REFUSED (the client's port is closed: an ICMP error came back). */
static ssize_t spin_recv(Pump *p, char *buffer, double budget)
{
    double end = monotonic_now() + budget;
    for (;;) {
        ssize_t n = recv(p->sock, buffer, RECV_LIMIT, MSG_DONTWAIT);
        if (n >= 0) {
            spin_result(p, 1);
            return n;
        }
        if (errno == ECONNREFUSED)
            return REFUSED;
        if (monotonic_now() >= end) {
            spin_result(p, 0);
            return NOTHING;
        }
    }
}

/* sleep_recv for a download whose path has been seen to lose blocks (`precise_wait`):
 * ppoll, whose timer has a high resolution. The datagram's length, NOTHING, SIGNALLED or
 * REFUSED. */
static ssize_t precise_recv(Pump *p, char *buffer, double wait)
{
    struct pollfd watched = {.fd = p->sock, .events = POLLIN};
    struct timespec timeout;
    timeout.tv_sec = (time_t)wait;
    timeout.tv_nsec = (long)((wait - (double)timeout.tv_sec) * 1e9);
    int ready = ppoll(&watched, 1, &timeout, NULL);
    if (ready < 0)
        return errno == EINTR ? SIGNALLED : NOTHING;
    if (ready == 0)
        return NOTHING;
    ssize_t n = recv(p->sock, buffer, RECV_LIMIT, MSG_DONTWAIT);
    if (n >= 0)
        return n;
    return errno == ECONNREFUSED ? REFUSED : NOTHING;
}

/* Sleep in recv until `wake` (the socket's receive timeout, set only when it changes).
 * The datagram's length; NOTHING: woke without one; SIGNALLED: a signal interrupted it;
 * REFUSED: the client's port is closed.
 *
 * That timeout counts in scheduler ticks and wakes a tick or two late (at 250 Hz, 12 ms
 * for 5 ms), which costs nothing while ACKs come and a lost block that much more time.
 * ppoll wakes on time but costs more CPU per block (about 10 % of the server's in the
 * 50-client benchmark): it is used once the path has been seen to lose blocks
 * (`precise_wait`). */
static ssize_t sleep_recv(Pump *p, char *buffer, double wait)
{
    if (p->precise_wait)
        return precise_recv(p, buffer, fmin(wait, LONGEST_WAIT_MS / 1000.0));
    long ms = (long)ceil(wait * 1000);
    if (ms > LONGEST_WAIT_MS)
        ms = LONGEST_WAIT_MS;
    if (ms < 1)
        ms = 1;
    if (ms != p->waiting_ms) {
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        if (setsockopt(p->sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0)
            p->waiting_ms = ms;
    }
    ssize_t n = recv(p->sock, buffer, RECV_LIMIT, 0);
    if (n >= 0)
        return n;
    if (errno == EINTR)
        return SIGNALLED;
    return errno == ECONNREFUSED ? REFUSED : NOTHING; /* EAGAIN: timed out */
}

/* Copy the block at p->position from the read-ahead buffer into `payload`, refilling
 * the buffer with one pread when it does not hold all of it; whether it could. */
static int copy_ahead(Pump *p, unsigned char *payload)
{
    size_t blksize = (size_t)p->blksize;
    long long skip = p->position - p->ahead_start;
    if (p->ahead_length == 0 || skip < 0 || (size_t)skip + blksize > p->ahead_length) {
        long long left = p->size - p->position; /* at least blksize (read_block) */
        size_t want = left < (long long)p->ahead_capacity ? (size_t)left : p->ahead_capacity;
        ssize_t n = pread(p->file, p->ahead, want, (off_t)p->position);
        p->ahead_length = n > 0 ? (size_t)n : 0;
        p->ahead_start = p->position;
        skip = 0;
        if (p->ahead_length < blksize)
            return 0;
    }
    memcpy(payload, p->ahead + skip, blksize);
    return 1;
}

/* Read the next full block into `datagram` (after its 4-byte header). 0: not possible
 * here (the end is near, a short read, an error): Python reads it again and decides. */
static int read_block(Pump *p, unsigned char *datagram, long long block)
{
    if (p->position + p->blksize > p->size)
        return 0;
    if (p->ahead != NULL) {
        if (!copy_ahead(p, datagram + 4))
            return 0;
    } else if (pread(p->file, datagram + 4, (size_t)p->blksize, (off_t)p->position) !=
               p->blksize)
        return 0;
    datagram[0] = 0;
    datagram[1] = OPCODE_DATA;
    datagram[2] = (unsigned char)((block >> 8) & 0xFF);
    datagram[3] = (unsigned char)(block & 0xFF);
    p->position += p->blksize;
    return 1;
}

static int is_ack_of(const unsigned char *datagram, ssize_t length, long long block)
{
    return length >= 4 && datagram[0] == 0 && datagram[1] == OPCODE_ACK &&
           ((datagram[2] << 8) | datagram[3]) == (block & 0xFFFF);
}

/* netsvc.tftp.colocate.move_to_incoming_cpu: move to the CPU that processed the last
 * packet from the client, then allow the former CPUs again; whether that CPU was known. */
static int move_to_incoming_cpu(Pump *p)
{
    int cpu = -1;
    socklen_t length = sizeof cpu;
    if (getsockopt(p->sock, SOL_SOCKET, SO_INCOMING_CPU, &cpu, &length) != 0)
        return 1;
    if (cpu < 0)
        return 0;
    cpu_set_t allowed, there;
    if (cpu < CPU_SETSIZE && cpu != sched_getcpu() &&
        sched_getaffinity(0, sizeof allowed, &allowed) == 0 && CPU_ISSET(cpu, &allowed) &&
        CPU_COUNT(&allowed) > 1) {
        CPU_ZERO(&there);
        CPU_SET(cpu, &there);
        if (sched_setaffinity(0, sizeof there, &there) == 0)
            (void)sched_setaffinity(0, sizeof allowed, &allowed);
    }
    p->follow_cpu = sched_getcpu();
    return 1;
}

/* The loop, without the GIL. `flight` holds the block in flight, `staged` the next one;
 * both 4+blksize. */
static int run(Pump *p, const unsigned char *board, unsigned char **flight,
               unsigned char **staged, int *have_staged, char *received, ssize_t *received_length)
{
    for (;;) {
        double now = monotonic_now();
        double deadline = p->sent_at + p->rto;
        double wake = deadline < p->stop_at ? deadline : p->stop_at;
        if (now >= wake)
            return REASON_WAKE;
        ssize_t n = NOTHING;
        /* Poll first only while the server runs no other transfer (drive_download). */
        if (p->spin_limit > 0 && (board == NULL || board[0] <= 1)) {
            double budget = spin_budget(p, now);
            if (budget > wake - now)
                budget = wake - now;
            if (budget > 0)
                n = spin_recv(p, received, budget);
        }
        if (n == NOTHING)
            n = sleep_recv(p, received, wake - now);
        if (n == SIGNALLED)
            return INTERRUPTED;
        if (n == REFUSED)
            return REASON_REFUSED;
        if (n < 0)
            continue;
        if (p->follow_client_cpu) { /* ClientCpu.after_receive, alone as for polling */
            if (p->follow_countdown > 0)
                p->follow_countdown--;
            else if (board == NULL || board[0] <= 1 || move_to_incoming_cpu(p))
                p->follow_countdown = p->follow_every - 1;
        }
        now = monotonic_now();
        if (!is_ack_of((unsigned char *)received, n, p->block)) {
            *received_length = n;
            return REASON_DATAGRAM;
        }
        /* The ACK of the block in flight, which was sent once: time it (Karn's rule). */
        timer_sample(p, now - p->sent_at);
        p->acked++;
        p->last_ack_at = now;
        unsigned char *sent = *flight;
        *flight = *staged;
        *staged = sent;
        p->block++;
        p->sent_at = now;
        /* ENOBUFS...: a lost packet; the timers recover (as drive_download). */
        if (send(p->sock, *flight, (size_t)p->blksize + 4, 0) < 0 && errno == ECONNREFUSED) {
            *have_staged = 0; /* `staged` still holds the block before */
            return REASON_REFUSED;
        }
        if (!read_block(p, *staged, p->block + 1)) {
            *have_staged = 0;
            return REASON_READ;
        }
    }
}

/* Attribute access on the state object (netsvc.tftp.lockstep.PumpState). */
static int get_long_long(PyObject *o, const char *name, long long *out)
{
    PyObject *v = PyObject_GetAttrString(o, name);
    if (v == NULL)
        return -1;
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int get_long(PyObject *o, const char *name, long *out)
{
    long long v;
    if (get_long_long(o, name, &v) < 0)
        return -1;
    *out = (long)v;
    return 0;
}

/* A str attribute, UTF-8, into `buffer` (NUL-terminated). */
static int get_text(PyObject *o, const char *name, char *buffer, size_t size)
{
    PyObject *v = PyObject_GetAttrString(o, name);
    if (v == NULL)
        return -1;
    Py_ssize_t length;
    const char *text = PyUnicode_Check(v) ? PyUnicode_AsUTF8AndSize(v, &length) : NULL;
    if (text == NULL || (size_t)length >= size || strlen(text) != (size_t)length) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "%s must be a str shorter than %zu bytes", name, size);
        Py_DECREF(v);
        return -1;
    }
    memcpy(buffer, text, (size_t)length + 1);
    Py_DECREF(v);
    return 0;
}

static int get_int(PyObject *o, const char *name, int *out)
{
    long long v;
    if (get_long_long(o, name, &v) < 0)
        return -1;
    *out = (int)v;
    return 0;
}

static int get_double(PyObject *o, const char *name, double *out)
{
    PyObject *v = PyObject_GetAttrString(o, name);
    if (v == NULL)
        return -1;
    *out = PyFloat_AsDouble(v);
    Py_DECREF(v);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static int set_new(PyObject *o, const char *name, PyObject *v)
{
    if (v == NULL)
        return -1;
    int result = PyObject_SetAttrString(o, name, v);
    Py_DECREF(v);
    return result;
}

static int load(PyObject *s, Pump *p)
{
    PyObject *srtt = PyObject_GetAttrString(s, "srtt");
    if (srtt == NULL)
        return -1;
    p->has_srtt = srtt != Py_None;
    p->srtt = p->has_srtt ? PyFloat_AsDouble(srtt) : 0.0;
    Py_DECREF(srtt);
    if (PyErr_Occurred())
        return -1;
    p->acked = 0;
    p->last_ack_at = 0.0;
    p->follow_cpu = -1;
    if (get_int(s, "sock", &p->sock) < 0 || get_int(s, "file", &p->file) < 0 ||
        get_int(s, "blksize", &p->blksize) < 0 || get_long_long(s, "size", &p->size) < 0 ||
        get_double(s, "rto_min", &p->rto_min) < 0 || get_double(s, "rto_max", &p->rto_max) < 0 ||
        get_double(s, "stop_at", &p->stop_at) < 0 ||
        get_double(s, "spin_limit", &p->spin_limit) < 0 ||
        get_long(s, "spin_misses_allowed", &p->spin_misses_allowed) < 0 ||
        get_long(s, "spin_longest_pause", &p->spin_longest_pause) < 0 ||
        get_long_long(s, "block", &p->block) < 0 ||
        get_long_long(s, "position", &p->position) < 0 ||
        get_double(s, "sent_at", &p->sent_at) < 0 || get_double(s, "rttvar", &p->rttvar) < 0 ||
        get_double(s, "rto", &p->rto) < 0 || get_long(s, "waiting_ms", &p->waiting_ms) < 0 ||
        get_long(s, "spin_misses", &p->spin_misses) < 0 ||
        get_long(s, "spin_pause", &p->spin_pause) < 0 ||
        get_long(s, "spin_next_pause", &p->spin_next_pause) < 0 ||
        get_long(s, "idle_cpu_count", &p->idle_cpu_count) < 0 ||
        get_int(s, "follow_client_cpu", &p->follow_client_cpu) < 0 ||
        get_int(s, "precise_wait", &p->precise_wait) < 0 ||
        get_long(s, "follow_countdown", &p->follow_countdown) < 0 ||
        get_long(s, "follow_every", &p->follow_every) < 0 ||
        get_text(s, "idle_cpu_path", p->idle_cpu_path, sizeof p->idle_cpu_path) < 0)
        return -1;
    p->idle_cpu_checked_at = -INFINITY;
    p->idle_cpu_verdict = 1;
    if (p->blksize < 8 || p->blksize > 65464) {
        PyErr_Format(PyExc_ValueError, "blksize out of range: %d", p->blksize);
        return -1;
    }
    return 0;
}

static int store(PyObject *s, const Pump *p, const unsigned char *flight,
                 const unsigned char *staged, int have_staged)
{
    Py_ssize_t length = (Py_ssize_t)p->blksize + 4;
    PyObject *staged_object = have_staged
                                  ? PyBytes_FromStringAndSize((const char *)staged, length)
                                  : Py_NewRef(Py_None);
    PyObject *srtt = p->has_srtt ? PyFloat_FromDouble(p->srtt) : Py_NewRef(Py_None);
    if (set_new(s, "block", PyLong_FromLongLong(p->block)) < 0 ||
        set_new(s, "position", PyLong_FromLongLong(p->position)) < 0 ||
        set_new(s, "sent_at", PyFloat_FromDouble(p->sent_at)) < 0 ||
        set_new(s, "srtt", srtt) < 0 ||
        set_new(s, "rttvar", PyFloat_FromDouble(p->rttvar)) < 0 ||
        set_new(s, "rto", PyFloat_FromDouble(p->rto)) < 0 ||
        set_new(s, "waiting_ms", PyLong_FromLong(p->waiting_ms)) < 0 ||
        set_new(s, "spin_misses", PyLong_FromLong(p->spin_misses)) < 0 ||
        set_new(s, "spin_pause", PyLong_FromLong(p->spin_pause)) < 0 ||
        set_new(s, "spin_next_pause", PyLong_FromLong(p->spin_next_pause)) < 0 ||
        set_new(s, "acked", PyLong_FromLong(p->acked)) < 0 ||
        set_new(s, "follow_countdown", PyLong_FromLong(p->follow_countdown)) < 0 ||
        set_new(s, "follow_cpu", PyLong_FromLong(p->follow_cpu)) < 0 ||
        set_new(s, "last_ack_at", PyFloat_FromDouble(p->last_ack_at)) < 0 ||
        set_new(s, "in_flight", PyBytes_FromStringAndSize((const char *)flight, length)) < 0 ||
        set_new(s, "staged", staged_object) < 0)
        return -1;
    return 0;
}

/* Copy a Python bytes attribute of exactly `length` bytes into `buffer`. */
static int load_datagram(PyObject *s, const char *name, unsigned char *buffer, Py_ssize_t length)
{
    PyObject *v = PyObject_GetAttrString(s, name);
    if (v == NULL)
        return -1;
    if (!PyBytes_Check(v) || PyBytes_GET_SIZE(v) != length) {
        PyErr_Format(PyExc_ValueError, "%s must be a full block's datagram", name);
        Py_DECREF(v);
        return -1;
    }
    memcpy(buffer, PyBytes_AS_STRING(v), (size_t)length);
    Py_DECREF(v);
    return 0;
}

PyDoc_STRVAR(pump_doc,
             "pump(state, board) -> (reason, datagram or None)\n\n"
             "Run the lock-step steady state from `state` (a PumpState, updated in place);\n"
             "`board` is the server's shared page or None. See netsvc.tftp.lockstep.");

static PyObject *pump(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *state, *board_object;
    if (!PyArg_ParseTuple(args, "OO:pump", &state, &board_object))
        return NULL;
    Pump p;
    if (load(state, &p) < 0)
        return NULL;
    Py_buffer board = {0};
    int have_board = board_object != Py_None;
    if (have_board && PyObject_GetBuffer(board_object, &board, PyBUF_SIMPLE) < 0)
        return NULL;
    if (have_board && board.len < 1) {
        PyBuffer_Release(&board);
        PyErr_SetString(PyExc_ValueError, "board is empty");
        return NULL;
    }
    Py_ssize_t length = (Py_ssize_t)p.blksize + 4;
    /* One pread per READ_AHEAD bytes rather than per block: a system call costs more
     * than the copy out of the buffer, at small block sizes (docs/benchmarks.rst). */
    p.ahead_capacity = p.blksize <= READ_AHEAD_LARGEST_BLKSIZE ? READ_AHEAD : 0;
    p.ahead_length = 0;
    p.ahead_start = 0;
    unsigned char *buffers = malloc(2 * (size_t)length + p.ahead_capacity);
    p.ahead = buffers != NULL && p.ahead_capacity > 0 ? buffers + 2 * length : NULL;
    char received[RECV_LIMIT];
    if (buffers == NULL) {
        if (have_board)
            PyBuffer_Release(&board);
        return PyErr_NoMemory();
    }
    unsigned char *flight = buffers, *staged = buffers + length;
    PyObject *result = NULL;
    if (load_datagram(state, "in_flight", flight, length) == 0 &&
        load_datagram(state, "staged", staged, length) == 0) {
        int have_staged = 1;
        ssize_t received_length = 0;
        int reason;
        for (;;) {
            Py_BEGIN_ALLOW_THREADS
            reason = run(&p, have_board ? (const unsigned char *)board.buf : NULL, &flight,
                         &staged, &have_staged, received, &received_length);
            Py_END_ALLOW_THREADS
            /* A handler that raises (SIGTERM: the server stops) ends the pump. */
            if (reason != INTERRUPTED || PyErr_CheckSignals() < 0)
                break;
        }
        /* Store even when a signal handler raised: the engine must learn what was sent. */
        PyObject *error_type, *error_value, *error_traceback;
        PyErr_Fetch(&error_type, &error_value, &error_traceback);
        int stored = store(state, &p, flight, staged, have_staged);
        if (error_type != NULL) {
            if (stored == 0)
                PyErr_Restore(error_type, error_value, error_traceback);
            else {
                Py_XDECREF(error_type);
                Py_XDECREF(error_value);
                Py_XDECREF(error_traceback);
            }
        } else if (stored == 0) {
            if (reason == REASON_DATAGRAM)
                result = Py_BuildValue("(iy#)", reason, received, received_length);
            else
                result = Py_BuildValue("(iO)", reason, Py_None);
        }
    }
    free(buffers);
    if (have_board)
        PyBuffer_Release(&board);
    return result;
}

PyDoc_STRVAR(sample_doc,
             "timer_sample(srtt, rttvar, rtt, minimum, maximum) -> (srtt, rttvar, rto)\n\n"
             "The timer arithmetic pump() uses, for tests against RetransmitTimer.sample.");

static PyObject *timer_sample_py(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *srtt;
    Pump p;
    double rtt;
    if (!PyArg_ParseTuple(args, "Odddd:timer_sample", &srtt, &p.rttvar, &rtt, &p.rto_min,
                          &p.rto_max))
        return NULL;
    p.has_srtt = srtt != Py_None;
    p.srtt = p.has_srtt ? PyFloat_AsDouble(srtt) : 0.0;
    if (PyErr_Occurred())
        return NULL;
    timer_sample(&p, rtt);
    return Py_BuildValue("(ddd)", p.srtt, p.rttvar, p.rto);
}

PyDoc_STRVAR(running_doc,
             "running_tasks(text: bytes) -> int\n\n"
             "The running-task count of a /proc/loadavg text as pump() reads it (-1: none),\n"
             "for tests against netsvc.spin.running_tasks.");

static PyObject *running_tasks_py(PyObject *module, PyObject *args)
{
    (void)module;
    const char *text;
    if (!PyArg_ParseTuple(args, "y:running_tasks", &text))
        return NULL;
    return PyLong_FromLong(running_tasks(text));
}

/* send_all: a window's datagrams in as few sendmmsg() calls as the kernel allows. */
#define SEND_ALL_BATCH 64

PyDoc_STRVAR(send_all_doc,
             "send_all(fd, datagrams) -> int\n\n"
             "Send each datagram of the list on the connected socket fd, in order, with\n"
             "sendmmsg: how many went out. A datagram that cannot go (EAGAIN, ENOBUFS...)\n"
             "ends it, a lost packet for the timers to recover, as with send; a closed\n"
             "peer port (ECONNREFUSED) raises ConnectionRefusedError.");

static PyObject *send_all(PyObject *module, PyObject *args)
{
    (void)module;
    int fd;
    PyObject *list;
    if (!PyArg_ParseTuple(args, "iO!:send_all", &fd, &PyList_Type, &list))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(list);
    struct mmsghdr messages[SEND_ALL_BATCH];
    struct iovec parts[SEND_ALL_BATCH];
    Py_ssize_t done = 0;
    int refused = 0;
    while (done < count) {
        int batch = 0;
        for (; batch < SEND_ALL_BATCH && done + batch < count; batch++) {
            PyObject *item = PyList_GET_ITEM(list, done + batch);
            if (!PyBytes_Check(item)) {
                PyErr_SetString(PyExc_TypeError, "send_all: datagrams must be bytes");
                return NULL;
            }
            parts[batch].iov_base = PyBytes_AS_STRING(item);
            parts[batch].iov_len = (size_t)PyBytes_GET_SIZE(item);
            memset(&messages[batch], 0, sizeof messages[batch]);
            messages[batch].msg_hdr.msg_iov = &parts[batch];
            messages[batch].msg_hdr.msg_iovlen = 1;
        }
        int sent;
        /* The list holds the bytes objects, and no Python code runs meanwhile. */
        Py_BEGIN_ALLOW_THREADS
        do {
            sent = sendmmsg(fd, messages, (unsigned int)batch, 0);
        } while (sent < 0 && errno == EINTR);
        Py_END_ALLOW_THREADS
        if (sent < 0) {
            refused = errno == ECONNREFUSED;
            break;
        }
        if (sent == 0)
            break;
        /* A short count: a message failed and sendmmsg kept its error to itself. Go on
         * from that message: an error that lasts fails the next call at once, with its
         * errno. One that does not is the peer's closed port: the ICMP answer to one
         * message is reported once, to the send of the next, and lost there; the next
         * calls meet it again and leave it pending for a recv to report. */
        done += sent;
    }
    if (refused) {
        errno = ECONNREFUSED;
        return PyErr_SetFromErrno(PyExc_OSError); /* ConnectionRefusedError */
    }
    return PyLong_FromSsize_t(done);
}

static PyMethodDef methods[] = {
    {"send_all", send_all, METH_VARARGS, send_all_doc},
    {"pump", pump, METH_VARARGS, pump_doc},
    {"timer_sample", timer_sample_py, METH_VARARGS, sample_doc},
    {"running_tasks", running_tasks_py, METH_VARARGS, running_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT, "netsvc.tftp._lockstep",
    "The lock-step steady state of a TFTP download, in C (see netsvc.tftp.lockstep).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__lockstep(void) { return PyModule_Create(&module_definition); }
