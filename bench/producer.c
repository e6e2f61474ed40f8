/* producer.c - bench/run's job producer: pipelined XADD in batches, one
 * latency sample per job.
 *
 *   producer -p PORT -n N -j TEMPLATE [-x PREFIX] [-r RATE] [-b BATCH]
 *            [-s STREAM] [-e CHANNEL] [-t SECONDS] [-H HOST] [-U SOCKET] [-o FILE] [-S]
 *
 * Each job is TEMPLATE with "%ID%" replaced by PREFIX followed by the job's
 * index and "%AID%" by a pseudo-random pgbench account id (1..1000000). Jobs
 * are added with "XADD STREAM * job <envelope>" in pipelined batches of BATCH
 * (default 500); with -r RATE the producer is paced to RATE jobs/s: it sends
 * each job when it is due, as independent producers would (one XADD at a
 * time, or what fell due together when it woke late), otherwise it sends as
 * fast as Redis takes them.
 *
 * Before sending, a second connection subscribes to CHANNEL (jobd:events,
 * where jobd publishes every result record), and a thread timestamps each
 * record of this run as it arrives. Latency = arrival of the result record -
 * the moment the job's batch was written to Redis (CLOCK_MONOTONIC, us). The
 * stream entry id carries the enqueue time too (jobd reports it as
 * "queued_at"), so the ms-resolution "finished_at - queued_at" from the
 * records is kept as a cross-check.
 *
 * Prints one JSON object on stdout: counts, rates and percentiles (ms), and
 * t0_us, the first send on CLOCK_MONOTONIC (us), to line up -o with other
 * samples. With
 * -o FILE, also one line per job: its send time (us from the first send) and
 * latency (us), -1 when its record never came: for looking at the tail.
 * The records' own times (ms, CLOCK_REALTIME) split each latency in four
 * stages: "xadd" (sent -> queued_at, the entry id's time: the producer's
 * write and Redis taking it), "wait" (queued_at -> started_at: in the
 * stream, read by jobd, parsed), "run" (started_at -> finished_at) and
 * "deliver" (finished_at -> the record here: jobd's outcome batch, the
 * transaction, the PUBLISH). The JSON has each stage's mean over all jobs
 * ("stages_ms") and over the slowest 1% ("tail_stages_ms", the jobs at or
 * above the p99): where a slow round's time went.
 * With -U SOCKET both connections use Redis's unix socket instead of TCP.
 * With -S (send only) there is no subscriber and nothing is waited for: the
 * jobs are only added, at the same pace, so that what the sending alone costs
 * the producer and Redis can be measured apart from the jobs' handling (send
 * them to a stream nobody reads); the JSON then has the counts, rates and
 * cpu_s only.
 * Exit status 0 when every job succeeded, 1 otherwise.
 *
 * Build: cc -O2 -o producer producer.c $(pkg-config --cflags --libs hiredis) -pthread
 */
#define _GNU_SOURCE
#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static const char *host = "127.0.0.1";
static const char *unix_path;       /* -U: connect here instead of host:port */
static int port = 6379;
static long n = 1000;
static const char *tmpl = "{\"id\":\"%ID%\",\"type\":\"sleep\",\"ms\":0}";
static const char *prefix = "p";
static double rate;                 /* jobs/s, 0: unpaced */
static long batch = 500;
static const char *stream = "jobd:queue";
static const char *channel = "jobd:events";
static double timeout_s = 600;
static const char *dump_path;
static bool send_only;              /* -S */

static int64_t *sent_us;            /* per job: when its batch was written */
static int64_t *recv_us;            /* per job: when its record arrived, 0 = not yet */
static int64_t *ms_lat;             /* per job: finished_at - queued_at from the record */
static int64_t (*stamps)[3];        /* per job: queued_at, started_at, finished_at (ms) */
static int64_t real_minus_mono_us;  /* CLOCK_REALTIME - CLOCK_MONOTONIC, at start */
static atomic_long received;
static long failed, duplicates, foreign;
static atomic_bool subscribed, stop;

static int64_t clock_us(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t now_us(void)
{
    return clock_us(CLOCK_MONOTONIC);
}

static void die(const char *what, const redisContext *c)
{
    fprintf(stderr, "producer: %s: %s\n", what, c && c->err ? c->errstr : strerror(errno));
    exit(2);
}

static redisContext *connect_redis(void)
{
    redisContext *c = unix_path ? redisConnectUnix(unix_path) : redisConnect(host, port);
    if (!c || c->err)
        die("connect", c);
    return c;
}

/* The integer after "KEY": in a JSON text, or -1. */
static int64_t json_int_after(const char *s, const char *key)
{
    const char *p = strstr(s, key);
    return p ? strtoll(p + strlen(key), NULL, 10) : -1;
}

static void take_record(const char *rec, int64_t t)
{
    /* jobd writes "id" first: {"id":"<prefix><index>","type":...}. */
    static const char idkey[] = "{\"id\":\"";
    size_t plen = strlen(prefix);
    if (strncmp(rec, idkey, sizeof(idkey) - 1) ||
        strncmp(rec + sizeof(idkey) - 1, prefix, plen)) {
        foreign++;
        return;
    }
    char *end;
    long i = strtol(rec + sizeof(idkey) - 1 + plen, &end, 10);
    if (*end != '"' || i < 0 || i >= n) {
        foreign++;
        return;
    }
    if (recv_us[i]) {
        duplicates++;
        return;
    }
    recv_us[i] = t;
    if (!strstr(rec, "\"status\":\"succeeded\"")) {
        if (failed < 3)
            fprintf(stderr, "producer: job failed: %.300s\n", rec);
        failed++;
    }
    int64_t q = json_int_after(rec, "\"queued_at\":"), f = json_int_after(rec, "\"finished_at\":");
    ms_lat[i] = q > 0 && f > 0 ? f - q : -1;
    stamps[i][0] = q;
    stamps[i][1] = json_int_after(rec, "\"started_at\":");
    stamps[i][2] = f;
    atomic_fetch_add(&received, 1);
}

static void *subscriber(void *arg)
{
    (void)arg;
    redisContext *c = connect_redis();
    struct timeval tv = {0, 200000};
    redisSetTimeout(c, tv);
    redisReply *r = redisCommand(c, "SUBSCRIBE %s", channel);
    if (!r)
        die("SUBSCRIBE", c);
    freeReplyObject(r);
    atomic_store(&subscribed, true);
    while (!atomic_load(&stop) && atomic_load(&received) < n) {
        void *reply;
        if (redisGetReply(c, &reply) != REDIS_OK) {
            if (c->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                /* Read timeout: look at the stop flag and wait again. */
                c->err = 0;
                c->errstr[0] = '\0';
                continue;
            }
            die("reading results", c);
        }
        int64_t t = now_us();
        redisReply *m = reply;
        if (m->type == REDIS_REPLY_ARRAY && m->elements == 3 &&
            m->element[2]->type == REDIS_REPLY_STRING)
            take_record(m->element[2]->str, t);
        freeReplyObject(reply);
    }
    redisFree(c);
    return NULL;
}

/* TEMPLATE with %ID% and %AID% replaced. */
static size_t render(char *buf, size_t cap, long i, uint64_t *rng)
{
    size_t o = 0;
    for (const char *p = tmpl; *p && o + 64 < cap;) {
        if (!strncmp(p, "%ID%", 4)) {
            o += (size_t)snprintf(buf + o, cap - o, "%s%ld", prefix, i);
            p += 4;
        } else if (!strncmp(p, "%AID%", 5)) {
            *rng ^= *rng << 13, *rng ^= *rng >> 7, *rng ^= *rng << 17;
            o += (size_t)snprintf(buf + o, cap - o, "%" PRIu64, *rng % 1000000 + 1);
            p += 5;
        } else {
            buf[o++] = *p++;
        }
    }
    buf[o] = '\0';
    return o;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted v[0..len), in ms. */
static double pct(const int64_t *v, long len, double p, double unit)
{
    if (len <= 0)
        return -1;
    long k = (long)(p / 100.0 * (double)len + 0.999999) - 1;
    if (k < 0)
        k = 0;
    if (k >= len)
        k = len - 1;
    return (double)v[k] / unit;
}

/* This process's CPU time so far (user + system, both threads). */
static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* Mean of each stage (ms), over the jobs whose latency is at least MIN_US,
 * as a JSON object; jobs whose record lacks a time are left out. */
static void print_stages(const char *name, int64_t min_us)
{
    double sum[4] = {0};
    long count = 0;
    for (long k = 0; k < n; k++) {
        int64_t q = stamps[k][0], st = stamps[k][1], f = stamps[k][2];
        if (!recv_us[k] || recv_us[k] - sent_us[k] < min_us || q <= 0 || st <= 0 || f <= 0)
            continue;
        sum[0] += (double)(q * 1000 - (sent_us[k] + real_minus_mono_us));
        sum[1] += (double)((st - q) * 1000);
        sum[2] += (double)((f - st) * 1000);
        sum[3] += (double)(recv_us[k] + real_minus_mono_us - f * 1000);
        count++;
    }
    double d = count ? (double)count * 1000 : 1;
    printf(", \"%s\": {\"n\": %ld, \"xadd\": %.2f, \"wait\": %.2f, \"run\": %.2f, "
           "\"deliver\": %.2f}", name, count, sum[0] / d, sum[1] / d, sum[2] / d, sum[3] / d);
}

static void usage(void)
{
    fprintf(stderr, "usage: producer -p PORT -n N -j TEMPLATE [-x PREFIX] [-r RATE] [-b BATCH]\n"
                    "                [-s STREAM] [-e CHANNEL] [-t SECONDS] [-H HOST] [-U SOCKET] [-o FILE] [-S]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int opt;
    while ((opt = getopt(argc, argv, "H:U:p:n:j:x:r:b:s:e:t:o:S")) != -1) {
        switch (opt) {
        case 'H': host = optarg; break;
        case 'U': unix_path = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'n': n = atol(optarg); break;
        case 'j': tmpl = optarg; break;
        case 'x': prefix = optarg; break;
        case 'r': rate = atof(optarg); break;
        case 'b': batch = atol(optarg); break;
        case 's': stream = optarg; break;
        case 'e': channel = optarg; break;
        case 't': timeout_s = atof(optarg); break;
        case 'o': dump_path = optarg; break;
        case 'S': send_only = true; break;
        default: usage();
        }
    }
    if (n <= 0 || batch <= 0 || port <= 0)
        usage();
    sent_us = calloc((size_t)n, sizeof(*sent_us));
    recv_us = calloc((size_t)n, sizeof(*recv_us));
    ms_lat = calloc((size_t)n, sizeof(*ms_lat));
    stamps = calloc((size_t)n, sizeof(*stamps));
    real_minus_mono_us = clock_us(CLOCK_REALTIME) - now_us();
    if (!sent_us || !recv_us || !ms_lat || !stamps)
        die("calloc", NULL);

    pthread_t sub;
    if (!send_only) {
        pthread_create(&sub, NULL, subscriber, NULL);
        while (!atomic_load(&subscribed))
            usleep(1000);
    }

    redisContext *c = connect_redis();
    size_t cap = strlen(tmpl) + 4096;
    char *buf = malloc(cap);
    uint64_t rng = 0x9e3779b97f4a7c15ULL ^ (uint64_t)getpid();
    const char *args[4] = {"XADD", stream, "*", "job"};
    size_t lens[5] = {4, strlen(stream), 1, 3, 0};
    int64_t t0 = now_us();
    long i = 0;
    while (i < n) {
        long upto = n;
        if (rate > 0) {
            /* Jobs due by now on a schedule of RATE/s from t0; with none
             * due, sleep until the next one is (at most a millisecond). */
            long due = (long)((double)(now_us() - t0) * rate / 1e6) + 1;
            if (due <= i) {
                int64_t next = t0 + (int64_t)((double)i * 1e6 / rate);
                int64_t tick = now_us() + 1000;
                int64_t wake = next < tick ? next : tick;
                struct timespec ts = {wake / 1000000, (wake % 1000000) * 1000};
                clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
                continue;
            }
            upto = due < n ? due : n;
        }
        if (upto - i > batch)
            upto = i + batch;
        for (long k = i; k < upto; k++) {
            const char *argv5[5] = {args[0], args[1], args[2], args[3], buf};
            lens[4] = render(buf, cap, k, &rng);
            redisAppendCommandArgv(c, 5, argv5, lens);
        }
        int done = 0;
        int64_t t = now_us();
        while (!done)
            if (redisBufferWrite(c, &done) != REDIS_OK)
                die("XADD", c);
        for (long k = i; k < upto; k++) {
            sent_us[k] = t;
            void *reply;
            if (redisGetReply(c, &reply) != REDIS_OK)
                die("XADD reply", c);
            if (((redisReply *)reply)->type == REDIS_REPLY_ERROR) {
                fprintf(stderr, "producer: XADD: %s\n", ((redisReply *)reply)->str);
                exit(2);
            }
            freeReplyObject(reply);
        }
        i = upto;
    }
    int64_t t_sent = now_us();
    if (send_only) {
        redisFree(c);
        double send_s = (double)(t_sent - t0) / 1e6;
        printf("{\"n\": %ld, \"target_rate\": %.0f, \"send_s\": %.4f, \"send_rate\": %.0f, "
               "\"cpu_s\": %.3f}\n",
               n, rate, send_s, send_s > 0 ? n / send_s : 0, cpu_seconds());
        return 0;
    }

    int64_t deadline = t0 + (int64_t)(timeout_s * 1e6);
    while (atomic_load(&received) < n && now_us() < deadline)
        usleep(1000);
    atomic_store(&stop, true);
    pthread_join(sub, NULL);
    redisFree(c);

    long got = atomic_load(&received);
    int64_t last = t0;
    int64_t *lat = malloc((size_t)n * sizeof(*lat)), *lat_ms = malloc((size_t)n * sizeof(*lat));
    long m = 0, mm = 0;
    for (long k = 0; k < n; k++) {
        if (!recv_us[k])
            continue;
        if (recv_us[k] > last)
            last = recv_us[k];
        lat[m++] = recv_us[k] - sent_us[k];
        if (ms_lat[k] >= 0)
            lat_ms[mm++] = ms_lat[k];
    }
    if (dump_path) {
        FILE *f = fopen(dump_path, "w");
        if (!f)
            die(dump_path, NULL);
        for (long k = 0; k < n; k++)
            fprintf(f, "%" PRId64 " %" PRId64 "\n", sent_us[k] - t0,
                    recv_us[k] ? recv_us[k] - sent_us[k] : -1);
        fclose(f);
    }
    qsort(lat, (size_t)m, sizeof(*lat), cmp_i64);
    qsort(lat_ms, (size_t)mm, sizeof(*lat_ms), cmp_i64);
    double elapsed = (double)(last - t0) / 1e6, send_s = (double)(t_sent - t0) / 1e6;
    double sum = 0;
    for (long k = 0; k < m; k++)
        sum += (double)lat[k];
    double cpu_s = cpu_seconds();
    printf("{\"n\": %ld, \"t0_us\": %" PRId64 ", \"received\": %ld, \"failed\": %ld, \"duplicates\": %ld, "
           "\"target_rate\": %.0f, \"send_s\": %.4f, \"send_rate\": %.0f, \"elapsed_s\": %.4f, "
           "\"rate\": %.1f, \"cpu_s\": %.3f, \"lat_ms\": {\"mean\": %.3f, \"p50\": %.3f, \"p90\": %.3f, "
           "\"p99\": %.3f, \"p999\": %.3f, \"max\": %.3f}, "
           "\"record_lat_ms\": {\"p50\": %.0f, \"p99\": %.0f, \"p999\": %.0f, \"max\": %.0f}",
           n, t0, got, failed + (n - got), duplicates, rate, send_s, send_s > 0 ? n / send_s : 0,
           elapsed, elapsed > 0 ? got / elapsed : 0, cpu_s, m ? sum / m / 1000 : -1,
           pct(lat, m, 50, 1000), pct(lat, m, 90, 1000), pct(lat, m, 99, 1000),
           pct(lat, m, 99.9, 1000), pct(lat, m, 100, 1000), pct(lat_ms, mm, 50, 1),
           pct(lat_ms, mm, 99, 1), pct(lat_ms, mm, 99.9, 1), pct(lat_ms, mm, 100, 1));
    print_stages("stages_ms", 0);
    print_stages("tail_stages_ms", (int64_t)pct(lat, m, 99, 1));
    printf("}\n");
    if (foreign)
        fprintf(stderr, "producer: %ld records of other jobs ignored\n", foreign);
    if (got < n)
        fprintf(stderr, "producer: %ld of %ld results missing after %.0f s\n", n - got, n,
                timeout_s);
    return failed || got < n || duplicates ? 1 : 0;
}
