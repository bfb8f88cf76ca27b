/*
 * sg_over_iscsi: an LD_PRELOAD shim that carries the SG_IO ioctls of sg3-utils (or of any
 * program talking to a Linux sg device) over iSCSI with libiscsi, so that the real sg3-utils
 * tools can be run against an iSCSI target on a machine without a kernel iSCSI initiator.
 * tests/sg3_utils.rs compiles it at test time:
 *
 *     cc -shared -fPIC -o sg_over_iscsi.so sg_over_iscsi.c -liscsi -ldl
 *
 * Environment:
 *   SG_ISCSI_DEVICES         "PATH=URL[,PATH=URL...]": each PATH (which need not exist) stands
 *                            for the logical unit at the libiscsi URL iscsi://HOST:PORT/IQN/LUN.
 *   SG_ISCSI_INITIATOR       the initiator name (default iqn.2026-11.dev.rtgt:sg-over-iscsi).
 *   SG_ISCSI_ISID_RANDOM     the ISID, as libiscsi's "random" format: 0x80 RR RR RR QQ QQ, with
 *   SG_ISCSI_ISID_QUALIFIER  RR RR RR the 24-bit random part and QQ QQ the 16-bit qualifier.
 *                            Unset: libiscsi's own random ISID.
 *   SG_ISCSI_DEBUG           when set, every command and its outcome on stderr.
 *
 * What a PATH looks like to the program:
 *   - stat/lstat/fstat/fstatat: a character device of the sg major (21), so sg3-utils takes it
 *     for an sg device (sg_dd, sg_xcopy and libsgutils' pass-through all check).
 *   - open: one iSCSI session per (portal, target) in the process, shared by every open PATH
 *     of that target (sg_xcopy opens its devices twice; a second login with the same ISID
 *     would reinstate, that is kill, the first session). The descriptor is a real one, of
 *     /dev/null, so close/flock/fcntl on it behave. The last close logs out.
 *   - ioctl SG_IO (the sg v3 interface, sg_io_hdr_t): the CDB runs with
 *     iscsi_scsi_command_sync; status, sense, residual, duration come back as the sg driver
 *     fills them (DRIVER_SENSE with sense data, SG_INFO_CHECK when anything is not good).
 *     Statuses come back as the target sent them: a CHECK CONDITION is status 0x02 with its
 *     sense bytes, RESERVATION CONFLICT is 0x18, and unit attentions are not consumed here
 *     (a kernel initiator's scan would eat the first power-on one; the tests do it openly).
 *   - the other sg ioctls sg3-utils issues (SG_GET_VERSION_NUM: 3.5.36, so libsgutils uses
 *     the v3 interface; reserved size, timeout...) are answered as the sg driver would.
 *   - read/write on the descriptor (the asynchronous sg interface) fail loudly: not carried.
 *
 * Not covered: the kernel's SCSI layer (sd, sg, the midlayer's error handling and retries,
 * its scan), iSCSI sessions kept across programs, bidirectional commands, CDBs over 16 bytes
 * (libiscsi's limit), scatter-gather (iovec_count), and statuses libiscsi does not pass on
 * (BUSY, TASK SET FULL, ACA ACTIVE, TASK ABORTED arrive as an error: host status DID_ERROR).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <scsi/sg.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#define SG_MAJOR 21
/* The sg driver version reported: 3.5.36, below 4.0 so that libsgutils speaks v3 (sg_io_hdr). */
#define SG_VERSION 30536
#define DRIVER_SENSE 0x08
#define DID_NO_CONNECT 0x01
#define DID_TIME_OUT 0x03
#define DID_ABORT 0x05
#define DID_ERROR 0x07
#define MAX_DEVICES 16
#define MAX_OPEN 64

struct session {
    char portal[MAX_STRING_SIZE + 1];
    char target[MAX_STRING_SIZE + 1];
    struct iscsi_context *iscsi;
    int refs;
};

struct device {
    char *path;
    char *url;
    /* Filled at first open. */
    int lun;
};

struct open_device {
    int fd; /* -1: free slot */
    struct device *dev;
    struct session *session;
    int reserved_size;
    int timeout_jiffies;
};

static struct device devices[MAX_DEVICES];
static int device_count;
static struct session sessions[MAX_DEVICES];
static struct open_device opened[MAX_OPEN];
static int initialised;
static int debug;

/* ---------------------------------------------------------------- the real functions */

/* real_NAME: the next definition of NAME (libc's), typed as our own. */
#define REAL(name)                                                                              \
    static __typeof__(&name) real_##name;                                                       \
    if (!real_##name) {                                                                         \
        real_##name = (__typeof__(&name))dlsym(RTLD_NEXT, #name);                               \
        if (!real_##name) {                                                                     \
            fprintf(stderr, "sg_over_iscsi: dlsym(%s): %s\n", #name, dlerror());                \
            abort();                                                                            \
        }                                                                                       \
    }


/* ---------------------------------------------------------------- configuration */

static void fail(const char *what) {
    fprintf(stderr, "sg_over_iscsi: %s\n", what);
    exit(99);
}

/* Parses SG_ISCSI_DEVICES once: "PATH=URL,PATH=URL". */
static void init(void) {
    if (initialised)
        return;
    initialised = 1;
    debug = getenv("SG_ISCSI_DEBUG") != NULL;
    for (int i = 0; i < MAX_OPEN; i++)
        opened[i].fd = -1;
    const char *spec = getenv("SG_ISCSI_DEVICES");
    if (!spec || !*spec)
        return;
    char *copy = strdup(spec);
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        if (!eq || eq == item || !eq[1])
            fail("SG_ISCSI_DEVICES: expected PATH=URL[,PATH=URL...]");
        if (device_count == MAX_DEVICES)
            fail("SG_ISCSI_DEVICES: too many devices");
        *eq = '\0';
        devices[device_count].path = strdup(item);
        devices[device_count].url = strdup(eq + 1);
        device_count++;
    }
    free(copy);
}

__attribute__((constructor)) static void shim_load(void) { init(); }

static struct device *device_of_path(const char *path) {
    init();
    if (!path)
        return NULL;
    for (int i = 0; i < device_count; i++)
        if (strcmp(devices[i].path, path) == 0)
            return &devices[i];
    return NULL;
}

static struct open_device *opened_of_fd(int fd) {
    init();
    if (fd < 0)
        return NULL;
    for (int i = 0; i < MAX_OPEN; i++)
        if (opened[i].fd == fd)
            return &opened[i];
    return NULL;
}

/* An sg character device: major 21, minor the device's index. */
static void fake_stat(const struct device *dev, struct stat *st) {
    memset(st, 0, sizeof(*st));
    st->st_dev = makedev(0, 5);
    st->st_ino = 0x5ca51000 + (dev - devices);
    st->st_mode = S_IFCHR | 0660;
    st->st_nlink = 1;
    st->st_rdev = makedev(SG_MAJOR, (unsigned)(dev - devices));
    st->st_blksize = 4096;
    clock_gettime(CLOCK_REALTIME, &st->st_atim);
    st->st_mtim = st->st_atim;
    st->st_ctim = st->st_atim;
}

/* ---------------------------------------------------------------- sessions */

static unsigned long env_number(const char *name, unsigned long max) {
    const char *v = getenv(name);
    if (!v)
        return 0;
    char *end;
    errno = 0;
    unsigned long n = strtoul(v, &end, 0);
    if (errno || *end || n > max) {
        fprintf(stderr, "sg_over_iscsi: %s=%s: not a number up to %#lx\n", name, v, max);
        exit(99);
    }
    return n;
}

/* Logs in to the URL's target, or shares the session already logged in. */
static struct session *session_for(struct device *dev) {
    const char *initiator = getenv("SG_ISCSI_INITIATOR");
    if (!initiator || !*initiator)
        initiator = "iqn.2026-11.dev.rtgt:sg-over-iscsi";
    struct iscsi_context *iscsi = iscsi_create_context(initiator);
    if (!iscsi) {
        fprintf(stderr, "sg_over_iscsi: iscsi_create_context failed\n");
        return NULL;
    }
    struct iscsi_url *url = iscsi_parse_full_url(iscsi, dev->url);
    if (!url) {
        fprintf(stderr, "sg_over_iscsi: %s: %s\n", dev->url, iscsi_get_error(iscsi));
        iscsi_destroy_context(iscsi);
        return NULL;
    }
    dev->lun = url->lun;
    struct session *free_slot = NULL;
    for (int i = 0; i < MAX_DEVICES; i++) {
        struct session *s = &sessions[i];
        if (s->iscsi && strcmp(s->portal, url->portal) == 0 && strcmp(s->target, url->target) == 0) {
            iscsi_destroy_url(url);
            iscsi_destroy_context(iscsi);
            s->refs++;
            return s;
        }
        if (!s->iscsi && !free_slot)
            free_slot = s;
    }
    if (!free_slot) {
        fprintf(stderr, "sg_over_iscsi: too many sessions\n");
        goto failed;
    }
    if (getenv("SG_ISCSI_ISID_RANDOM") || getenv("SG_ISCSI_ISID_QUALIFIER")) {
        uint32_t rnd = env_number("SG_ISCSI_ISID_RANDOM", 0xffffff);
        uint32_t qualifier = env_number("SG_ISCSI_ISID_QUALIFIER", 0xffff);
        iscsi_set_isid_random(iscsi, rnd, qualifier);
    }
    iscsi_set_targetname(iscsi, url->target);
    iscsi_set_session_type(iscsi, ISCSI_SESSION_NORMAL);
    iscsi_set_header_digest(iscsi, ISCSI_HEADER_DIGEST_NONE_CRC32C);
    if (url->user[0])
        iscsi_set_initiator_username_pwd(iscsi, url->user, url->passwd);
    /* A dropped connection is an error the program sees, not a silent re-login. */
    iscsi_set_noautoreconnect(iscsi, 1);
    /* Connect and log in only: iscsi_full_connect_sync would also send TEST UNIT READY and
     * swallow a power-on unit attention (and fail the login on any other). */
    if (iscsi_connect_sync(iscsi, url->portal) != 0 || iscsi_login_sync(iscsi) != 0) {
        fprintf(stderr, "sg_over_iscsi: login to %s at %s failed: %s\n", url->target, url->portal,
                iscsi_get_error(iscsi));
        goto failed;
    }
    snprintf(free_slot->portal, sizeof(free_slot->portal), "%s", url->portal);
    snprintf(free_slot->target, sizeof(free_slot->target), "%s", url->target);
    free_slot->iscsi = iscsi;
    free_slot->refs = 1;
    if (debug)
        fprintf(stderr, "sg_over_iscsi: logged in to %s at %s as %s\n", url->target, url->portal, initiator);
    iscsi_destroy_url(url);
    return free_slot;
failed:
    iscsi_destroy_url(url);
    iscsi_destroy_context(iscsi);
    return NULL;
}

static void session_put(struct session *s) {
    if (--s->refs > 0)
        return;
    iscsi_logout_sync(s->iscsi);
    iscsi_disconnect(s->iscsi);
    iscsi_destroy_context(s->iscsi);
    memset(s, 0, sizeof(*s));
}

/* Programs that exit with a device open still log out. */
__attribute__((destructor)) static void shim_unload(void) {
    for (int i = 0; i < MAX_OPEN; i++)
        if (opened[i].fd >= 0) {
            opened[i].fd = -1;
            session_put(opened[i].session);
        }
}

static int open_device(struct device *dev) {
    struct open_device *slot = NULL;
    for (int i = 0; i < MAX_OPEN && !slot; i++)
        if (opened[i].fd < 0)
            slot = &opened[i];
    if (!slot) {
        errno = EMFILE;
        return -1;
    }
    struct session *s = session_for(dev);
    if (!s) {
        errno = EIO;
        return -1;
    }
    REAL(open);
    int fd = real_open("/dev/null", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        session_put(s);
        errno = e;
        return -1;
    }
    slot->fd = fd;
    slot->dev = dev;
    slot->session = s;
    slot->reserved_size = SG_DEF_RESERVED_SIZE;
    slot->timeout_jiffies = 60 * 100;
    return fd;
}

/* ---------------------------------------------------------------- SG_IO */

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int sg_io(struct open_device *o, sg_io_hdr_t *h) {
    if (h->interface_id != 'S') {
        errno = ENOSYS; /* as the sg driver answers other interfaces */
        return -1;
    }
    if (h->iovec_count) {
        fprintf(stderr, "sg_over_iscsi: SG_IO with iovec_count is not carried\n");
        errno = EINVAL;
        return -1;
    }
    if (h->cmd_len < 6 || h->cmd_len > SCSI_CDB_MAX_SIZE || !h->cmdp) {
        fprintf(stderr, "sg_over_iscsi: a CDB of %u bytes is not carried (6 to 16)\n", h->cmd_len);
        errno = EINVAL;
        return -1;
    }
    int dir;
    switch (h->dxfer_direction) {
    case SG_DXFER_NONE:
        dir = SCSI_XFER_NONE;
        break;
    case SG_DXFER_TO_DEV:
        dir = SCSI_XFER_WRITE;
        break;
    case SG_DXFER_FROM_DEV:
    case SG_DXFER_TO_FROM_DEV: /* the sg driver's "indirect read" */
        dir = SCSI_XFER_READ;
        break;
    default:
        dir = h->dxfer_len ? -1 : SCSI_XFER_NONE;
    }
    if (dir < 0 || (dir != SCSI_XFER_NONE && !h->dxferp)) {
        errno = EINVAL;
        return -1;
    }
    uint32_t len = dir == SCSI_XFER_NONE ? 0 : h->dxfer_len;
    if (len == 0)
        dir = SCSI_XFER_NONE;

    unsigned char cdb[SCSI_CDB_MAX_SIZE];
    memcpy(cdb, h->cmdp, h->cmd_len);
    struct scsi_task *task = scsi_create_task(h->cmd_len, cdb, dir, len);
    if (!task) {
        errno = ENOMEM;
        return -1;
    }
    if (dir == SCSI_XFER_READ && scsi_task_add_data_in_buffer(task, len, h->dxferp) != 0) {
        scsi_free_scsi_task(task);
        errno = ENOMEM;
        return -1;
    }
    struct iscsi_data out = {.size = len, .data = h->dxferp};
    struct iscsi_context *iscsi = o->session->iscsi;
    /* h->timeout is in milliseconds; libiscsi's in seconds (0: none). */
    iscsi_set_timeout(iscsi, h->timeout ? (int)((h->timeout + 999) / 1000) : 0);

    uint64_t start = now_ms();
    struct scsi_task *done = iscsi_scsi_command_sync(iscsi, o->dev->lun, task, dir == SCSI_XFER_WRITE ? &out : NULL);
    h->duration = (unsigned)(now_ms() - start);
    h->status = 0;
    h->masked_status = 0;
    h->msg_status = 0;
    h->sb_len_wr = 0;
    h->host_status = 0;
    h->driver_status = 0;
    h->resid = 0;
    h->info = 0;

    int status = done ? done->status : SCSI_STATUS_ERROR;
    switch (status) {
    case SCSI_STATUS_GOOD:
        if (done->residual_status == SCSI_RESIDUAL_UNDERFLOW)
            h->resid = (int)done->residual;
        break;
    case SCSI_STATUS_CHECK_CONDITION: {
        h->status = SCSI_STATUS_CHECK_CONDITION;
        /* libiscsi keeps the SCSI Response's data segment: SenseLength (2 bytes), sense. */
        struct scsi_data *d = &done->datain;
        if (d->data && d->size >= 2) {
            int sense_len = (d->data[0] << 8) | d->data[1];
            if (sense_len > d->size - 2)
                sense_len = d->size - 2;
            if (sense_len > h->mx_sb_len)
                sense_len = h->mx_sb_len;
            if (sense_len > 0 && h->sbp) {
                memcpy(h->sbp, d->data + 2, sense_len);
                h->sb_len_wr = (unsigned char)sense_len;
                h->driver_status = DRIVER_SENSE;
            }
        }
        break;
    }
    case SCSI_STATUS_RESERVATION_CONFLICT:
        h->status = SCSI_STATUS_RESERVATION_CONFLICT;
        break;
    case SCSI_STATUS_TIMEOUT:
        h->host_status = DID_TIME_OUT;
        break;
    case SCSI_STATUS_CANCELLED:
        h->host_status = DID_ABORT;
        break;
    default:
        h->host_status = iscsi_is_logged_in(iscsi) ? DID_ERROR : DID_NO_CONNECT;
    }
    h->masked_status = (h->status >> 1) & 0x7f;
    if (h->status || h->host_status || h->driver_status)
        h->info = SG_INFO_CHECK;
    if (debug || (status != SCSI_STATUS_GOOD && status != SCSI_STATUS_CHECK_CONDITION &&
                  status != SCSI_STATUS_RESERVATION_CONFLICT)) {
        fprintf(stderr, "sg_over_iscsi: lun %d cdb", o->dev->lun);
        for (int i = 0; i < h->cmd_len; i++)
            fprintf(stderr, " %02x", cdb[i]);
        fprintf(stderr, ": status %#x host %#x sense %u bytes resid %d%s%s\n", h->status, h->host_status,
                h->sb_len_wr, h->resid, done ? "" : ": ", done ? "" : iscsi_get_error(iscsi));
    }
    /* Without an answer the task may still sit in libiscsi's queues: left alone (a leak on a
     * broken connection) rather than freed under them. */
    if (done)
        scsi_free_scsi_task(task);
    return 0;
}

static int sg_ioctl(struct open_device *o, unsigned long request, void *arg) {
    int *iarg = arg;
    switch (request) {
    case SG_IO:
        return sg_io(o, arg);
    case SG_GET_VERSION_NUM:
        *iarg = SG_VERSION;
        return 0;
    case SG_GET_RESERVED_SIZE:
        *iarg = o->reserved_size;
        return 0;
    case SG_SET_RESERVED_SIZE:
        if (*iarg < 0) {
            errno = EINVAL;
            return -1;
        }
        o->reserved_size = *iarg;
        return 0;
    case SG_SET_TIMEOUT:
        if (*iarg < 0) {
            errno = EIO;
            return -1;
        }
        o->timeout_jiffies = *iarg;
        return 0;
    case SG_GET_TIMEOUT: /* the value is the return value */
        return o->timeout_jiffies;
    case SG_EMULATED_HOST:
    case SG_GET_LOW_DMA:
    case SG_GET_NUM_WAITING:
    case SG_GET_COMMAND_Q:
    case SG_GET_KEEP_ORPHAN:
        *iarg = 0;
        return 0;
    case SG_GET_PACK_ID:
        *iarg = -1;
        return 0;
    case SG_GET_SG_TABLESIZE:
        *iarg = 128;
        return 0;
    case SG_SET_FORCE_PACK_ID:
    case SG_SET_COMMAND_Q:
    case SG_SET_KEEP_ORPHAN:
    case SG_SET_FORCE_LOW_DMA:
    case SG_SET_DEBUG:
        return 0;
    default:
        if (debug)
            fprintf(stderr, "sg_over_iscsi: ioctl %#lx not carried\n", request);
        errno = ENOTTY;
        return -1;
    }
}

/* ---------------------------------------------------------------- interposed functions */

static int open_common(const char *path, int flags, mode_t mode) {
    struct device *dev = device_of_path(path);
    if (dev)
        return open_device(dev);
    REAL(open);
    return real_open(path, flags, mode);
}

static mode_t mode_arg(int flags, va_list ap) {
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? va_arg(ap, mode_t) : 0;
}

int open(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return open_common(path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return open_common(path, flags, mode);
}

/* _FORTIFY_SOURCE builds (Debian's sg3-utils) call these. */
int __open_2(const char *path, int flags);
int __open_2(const char *path, int flags) { return open_common(path, flags, 0); }
int __open64_2(const char *path, int flags);
int __open64_2(const char *path, int flags) { return open_common(path, flags, 0); }

static int openat_common(int dirfd, const char *path, int flags, mode_t mode) {
    struct device *dev = (dirfd == AT_FDCWD || (path && path[0] == '/')) ? device_of_path(path) : NULL;
    if (dev)
        return open_device(dev);
    REAL(openat);
    return real_openat(dirfd, path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return openat_common(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return openat_common(dirfd, path, flags, mode);
}

int __openat_2(int dirfd, const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags) { return openat_common(dirfd, path, flags, 0); }
int __openat64_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags) { return openat_common(dirfd, path, flags, 0); }

int close(int fd) {
    struct open_device *o = opened_of_fd(fd);
    if (o) {
        struct session *s = o->session;
        o->fd = -1;
        session_put(s);
    }
    REAL(close);
    return real_close(fd);
}

int ioctl(int fd, unsigned long request, ...) {
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    struct open_device *o = opened_of_fd(fd);
    if (o)
        return sg_ioctl(o, request, arg);
    REAL(ioctl);
    return real_ioctl(fd, request, arg);
}

ssize_t read(int fd, void *buf, size_t count) {
    if (opened_of_fd(fd)) {
        fprintf(stderr, "sg_over_iscsi: read() on an sg device (the asynchronous interface) is not carried\n");
        errno = EINVAL;
        return -1;
    }
    REAL(read);
    return real_read(fd, buf, count);
}

ssize_t write(int fd, const void *buf, size_t count) {
    if (opened_of_fd(fd)) {
        fprintf(stderr, "sg_over_iscsi: write() on an sg device (the asynchronous interface) is not carried\n");
        errno = EINVAL;
        return -1;
    }
    REAL(write);
    return real_write(fd, buf, count);
}

/* On x86-64 (and every 64-bit Linux ABI) struct stat64 is struct stat. */
_Static_assert(sizeof(struct stat) == sizeof(struct stat64), "struct stat64 differs from struct stat");

#define STAT_PATH(name, type)                                                                   \
    int name(const char *path, type *st) {                                                      \
        struct device *dev = device_of_path(path);                                              \
        if (dev) {                                                                              \
            fake_stat(dev, (struct stat *)st);                                                  \
            return 0;                                                                           \
        }                                                                                       \
        REAL(name);                                                                             \
        return real_##name(path, st);                                                           \
    }
#define STAT_FD(name, type)                                                                     \
    int name(int fd, type *st) {                                                                \
        struct open_device *o = opened_of_fd(fd);                                               \
        if (o) {                                                                                \
            fake_stat(o->dev, (struct stat *)st);                                               \
            return 0;                                                                           \
        }                                                                                       \
        REAL(name);                                                                             \
        return real_##name(fd, st);                                                             \
    }
/* fstatat(fd, "", st, AT_EMPTY_PATH) is how glibc 2.33+ implements fstat itself. */
#define STAT_AT(name, type)                                                                     \
    int name(int dirfd, const char *path, type *st, int flags) {                                \
        struct device *dev = NULL;                                                              \
        if ((flags & AT_EMPTY_PATH) && !*path) {                                                \
            struct open_device *o = opened_of_fd(dirfd);                                        \
            dev = o ? o->dev : NULL;                                                            \
        } else if (dirfd == AT_FDCWD || path[0] == '/') {                                       \
            dev = device_of_path(path);                                                         \
        }                                                                                       \
        if (dev) {                                                                              \
            fake_stat(dev, (struct stat *)st);                                                  \
            return 0;                                                                           \
        }                                                                                       \
        REAL(name);                                                                             \
        return real_##name(dirfd, path, st, flags);                                             \
    }

STAT_PATH(stat, struct stat)
STAT_PATH(stat64, struct stat64)
STAT_PATH(lstat, struct stat)
STAT_PATH(lstat64, struct stat64)
STAT_FD(fstat, struct stat)
STAT_FD(fstat64, struct stat64)
STAT_AT(fstatat, struct stat)
STAT_AT(fstatat64, struct stat64)

/* glibc before 2.33 had programs call these instead. */
int __xstat(int ver, const char *path, struct stat *st);
int __xstat(int ver, const char *path, struct stat *st) {
    struct device *dev = device_of_path(path);
    if (dev) {
        fake_stat(dev, st);
        return 0;
    }
    REAL(__xstat);
    return real___xstat(ver, path, st);
}
int __xstat64(int ver, const char *path, struct stat *st) __attribute__((alias("__xstat")));
int __fxstat(int ver, int fd, struct stat *st);
int __fxstat(int ver, int fd, struct stat *st) {
    struct open_device *o = opened_of_fd(fd);
    if (o) {
        fake_stat(o->dev, st);
        return 0;
    }
    REAL(__fxstat);
    return real___fxstat(ver, fd, st);
}
int __fxstat64(int ver, int fd, struct stat *st) __attribute__((alias("__fxstat")));
