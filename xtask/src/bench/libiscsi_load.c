/*
 * libiscsi-load: random or sequential reads or writes through libiscsi, the initiator library
 * QEMU and iscsi-perf use, so that `cargo xtask bench` measures both targets with a client that
 * is not rtgt's own (iscsi-perf reads only). One thread drives every session through libiscsi's
 * asynchronous API; each session keeps QD commands in flight.
 *
 *   libiscsi-load PORTAL IQN LUN PATTERN BLOCK_SIZE QD SESSIONS SECONDS SEED
 *   PATTERN: randread randwrite seqread seqwrite, or idle: the sessions log in and send no
 *   command for SECONDS (they answer the target's NOP-Ins), to measure what idle sessions cost
 *
 * Prints one JSON object: ios, iops, mb_per_s, lat_p50_us, lat_p99_us, errors, and client_cpu: the
 * CPU time this (single-threaded) client used over the run per second of it, so 1.0 means the
 * client, not the target, set the rate.
 * Built by xtask with `gcc -O2 ... -liscsi`.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#define MAX_SESSIONS 256
#define MAX_SAMPLES (1 << 22)

struct session;

struct command {
    struct session *session;
    double started;
};

struct session {
    struct iscsi_context *iscsi;
    int lun;
};

static int reads, randomly, idle;
static uint32_t block_size;
static uint64_t blocks;          /* of the LU, in pieces of block_size */
static uint32_t block_length;    /* the LU's logical block */
static uint64_t next_lba;        /* sequential patterns */
static uint64_t rng;
static unsigned char *payload;
static double deadline;
static int stopping;
static uint64_t ios, errors, in_flight;
static float *samples;
static uint64_t sampled;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* The process's user and system CPU time so far. */
static double cpu_seconds(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6;
}

static uint64_t next_random(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static int submit(struct session *s);

static void completed(struct iscsi_context *iscsi, int status, void *command_data, void *private_data) {
    struct command *c = private_data;
    struct scsi_task *task = command_data;
    (void)iscsi;
    in_flight--;
    if (status == SCSI_STATUS_GOOD) {
        ios++;
        if (sampled < MAX_SAMPLES)
            samples[sampled++] = (float)((now() - c->started) * 1e6);
    } else {
        errors++;
        fprintf(stderr, "command failed: %s\n", iscsi_get_error(c->session->iscsi));
    }
    if (task)
        scsi_free_scsi_task(task);
    struct session *s = c->session;
    free(c);
    if (!stopping && now() < deadline)
        submit(s);
}

static int submit(struct session *s) {
    uint32_t lbas = block_size / block_length;
    uint64_t lba;
    if (randomly) {
        lba = (next_random() % blocks) * lbas;
    } else {
        lba = (next_lba % blocks) * lbas;
        next_lba++;
    }
    struct command *c = calloc(1, sizeof *c);
    c->session = s;
    c->started = now();
    struct scsi_task *t;
    if (reads)
        t = iscsi_read16_task(s->iscsi, s->lun, lba, block_size, block_length, 0, 0, 0, 0, 0, completed, c);
    else
        t = iscsi_write16_task(s->iscsi, s->lun, lba, payload, block_size, block_length, 0, 0, 0, 0, 0, completed, c);
    if (!t) {
        fprintf(stderr, "cannot queue a command: %s\n", iscsi_get_error(s->iscsi));
        free(c);
        return -1;
    }
    in_flight++;
    return 0;
}

static int by_value(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 10) {
        fprintf(stderr, "usage: %s PORTAL IQN LUN PATTERN BLOCK_SIZE QD SESSIONS SECONDS SEED\n", argv[0]);
        return 2;
    }
    const char *portal = argv[1], *iqn = argv[2], *pattern = argv[4];
    int lun = atoi(argv[3]);
    block_size = (uint32_t)atoi(argv[5]);
    int qd = atoi(argv[6]), nsessions = atoi(argv[7]);
    double seconds = atof(argv[8]);
    rng = 0x9e3779b97f4a7c15ULL ^ (uint64_t)strtoull(argv[9], NULL, 10) * 0x2545f4914f6cdd1dULL;
    reads = strstr(pattern, "read") != NULL;
    randomly = strncmp(pattern, "rand", 4) == 0;
    idle = strcmp(pattern, "idle") == 0;
    if (nsessions < 1 || nsessions > MAX_SESSIONS || qd < 1 || block_size < 512 || block_size % 512) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    payload = malloc(block_size);
    for (uint32_t i = 0; i < block_size; i++)
        payload[i] = (unsigned char)next_random();
    samples = malloc(sizeof(float) * MAX_SAMPLES);

    struct session sessions[MAX_SESSIONS];
    for (int i = 0; i < nsessions; i++) {
        char initiator[128];
        snprintf(initiator, sizeof initiator, "iqn.2026-12.dev.rtgt:libiscsi-load-%d", i);
        struct iscsi_context *iscsi = iscsi_create_context(initiator);
        iscsi_set_targetname(iscsi, iqn);
        iscsi_set_session_type(iscsi, ISCSI_SESSION_NORMAL);
        iscsi_set_header_digest(iscsi, ISCSI_HEADER_DIGEST_NONE);
        iscsi_set_noautoreconnect(iscsi, 1);
        if (iscsi_full_connect_sync(iscsi, portal, lun) != 0) {
            fprintf(stderr, "login to %s %s failed: %s\n", portal, iqn, iscsi_get_error(iscsi));
            return 1;
        }
        sessions[i].iscsi = iscsi;
        sessions[i].lun = lun;
    }
    struct scsi_task *cap = iscsi_readcapacity16_sync(sessions[0].iscsi, lun);
    struct scsi_readcapacity16 *rc16 = cap ? scsi_datain_unmarshall(cap) : NULL;
    if (!rc16) {
        fprintf(stderr, "READ CAPACITY(16) failed: %s\n", iscsi_get_error(sessions[0].iscsi));
        return 1;
    }
    block_length = rc16->block_length;
    if (block_length == 0 || block_size % block_length) {
        fprintf(stderr, "block size %u is not a multiple of the LU's %u\n", block_size, block_length);
        return 2;
    }
    blocks = (rc16->returned_lba + 1) * block_length / block_size;
    scsi_free_scsi_task(cap);

    if (idle) {
        /* The window the benchmark measures starts now. */
        printf("logged in\n");
        fflush(stdout);
    }
    double started = now(), cpu_started = cpu_seconds();
    deadline = started + seconds;
    for (int i = 0; i < nsessions && !idle; i++)
        for (int q = 0; q < qd; q++)
            if (submit(&sessions[i]) != 0)
                return 1;
    struct pollfd fds[MAX_SESSIONS];
    while (in_flight > 0 || (idle && now() < deadline)) {
        if (now() >= deadline)
            stopping = 1;
        for (int i = 0; i < nsessions; i++) {
            fds[i].fd = iscsi_get_fd(sessions[i].iscsi);
            fds[i].events = iscsi_which_events(sessions[i].iscsi);
            fds[i].revents = 0;
        }
        if (poll(fds, nsessions, idle ? 100 : 1000) < 0) {
            perror("poll");
            return 1;
        }
        for (int i = 0; i < nsessions; i++) {
            if (iscsi_service(sessions[i].iscsi, fds[i].revents) < 0) {
                fprintf(stderr, "session %d: %s\n", i, iscsi_get_error(sessions[i].iscsi));
                return 1;
            }
        }
    }
    double elapsed = now() - started, client_cpu = (cpu_seconds() - cpu_started) / elapsed;
    for (int i = 0; i < nsessions; i++) {
        iscsi_logout_sync(sessions[i].iscsi);
        iscsi_destroy_context(sessions[i].iscsi);
    }
    qsort(samples, sampled, sizeof(float), by_value);
    double p50 = sampled ? samples[sampled / 2] : 0, p99 = sampled ? samples[sampled * 99 / 100] : 0;
    printf("{\"ios\": %" PRIu64 ", \"iops\": %.1f, \"mb_per_s\": %.2f, \"lat_p50_us\": %.1f, \"lat_p99_us\": %.1f, "
           "\"errors\": %" PRIu64 ", \"client_cpu\": %.3f}\n",
           ios, ios / elapsed, ios * (double)block_size / elapsed / 1e6, p50, p99, errors, client_cpu);
    return errors ? 1 : 0;
}
