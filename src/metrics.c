/* metrics.c - Prometheus counters and histograms (see metrics.h). */
#include <event2/buffer.h>
#include <stdio.h>
#include <string.h>

#include "admin.h"
#include "cancels.h"
#include "daemon.h"
#include "exec_http.h"
#include "executor.h"
#include "heartbeat.h"
#include "intake.h"
#include "metrics.h"
#include "pgpool.h"
#include "redis.h"
#include "result.h"
#include "runner.h"
#include "scheduler.h"
#include "threadpool.h"

#define MAX_TYPES 16
/* Every stream intake.streams may list: a smaller table silently left the
 * streams past it without lag or pending series. */
#define MAX_STREAMS CONFIG_MAX_STREAMS

/* Bucket bounds in seconds, from 1 ms to 5 minutes. */
static const double bounds[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                1,     2.5,   5,    10,    30,    60,  300};
#define NBOUNDS (sizeof(bounds) / sizeof(bounds[0]))

#define NSTATUSES (JOB_REJECTED + 1)

struct type_metrics {
    char type[16];
    uint64_t total[NSTATUSES];  /* by enum job_status */
    uint64_t buckets[NBOUNDS];  /* cumulative counts are computed when rendering */
    uint64_t count;
    double sum;
};

static struct type_metrics types[MAX_TYPES];
static int ntypes;
static uint64_t dead_letters;

static struct {
    char name[513];             /* intake.streams items: up to 512 bytes; a name cut
                                 * short never matched again and took a new row per poll */
    int64_t lag, pending;
    bool shown;                 /* false: the last XINFO GROUPS failed, no series */
} streams[MAX_STREAMS];
static int nstreams;

static struct type_metrics *type_slot(const char *type)
{
    for (int i = 0; i < ntypes; i++)
        if (!strcmp(types[i].type, type))
            return &types[i];
    if (ntypes == MAX_TYPES)
        return NULL;
    snprintf(types[ntypes].type, sizeof(types[ntypes].type), "%s", type);
    return &types[ntypes++];
}

/* Both times are the wall clock's (they go into the result record too): a
 * clock stepped back while the job ran would give a negative duration,
 * counted in the first bucket and taken off _sum. Such a job counts as 0 s. */
double metrics_job_seconds(int64_t started_at, int64_t finished_at)
{
    return finished_at > started_at ? (double)(finished_at - started_at) / 1000.0 : 0.0;
}

void metrics_job_finished(const struct job *job)
{
    dead_letters += result_goes_to_dead(job);
    struct type_metrics *t = type_slot(job->exec ? job->exec->type : "unknown");
    if (!t)
        return;
    t->total[job->status]++;
    if (job->status == JOB_REJECTED)
        return;     /* never ran: no duration */
    double s = metrics_job_seconds(job->started_at, job->finished_at);
    for (size_t i = 0; i < NBOUNDS; i++)
        if (s <= bounds[i]) {
            t->buckets[i]++;
            break;
        }
    t->count++;
    t->sum += s;
}

void metrics_dead_letters(uint64_t n)
{
    dead_letters += n;
}

static int stream_slot(const char *stream)
{
    for (int i = 0; i < nstreams; i++)
        if (!strcmp(streams[i].name, stream))
            return i;
    return -1;
}

/* STREAM's row, made (not shown) the first time; -1 when the table is full. */
static int stream_row(const char *stream)
{
    int i = stream_slot(stream);
    if (i < 0 && nstreams < MAX_STREAMS) {
        i = nstreams++;
        snprintf(streams[i].name, sizeof(streams[0].name), "%s", stream);
        streams[i].shown = false;
    }
    return i;
}

void metrics_set_stream(const char *stream, int64_t lag, int64_t pending)
{
    int i = stream_row(stream);
    if (i < 0)
        return;
    streams[i].lag = lag;
    streams[i].pending = pending;
    streams[i].shown = true;
}

bool metrics_forget_stream(const char *stream)
{
    /* A stream never read before counts as shown: its first failure is
     * said too (one failing from the start was never mentioned). */
    bool first = stream_slot(stream) < 0;
    int i = stream_row(stream);
    bool was = i >= 0 && (first || streams[i].shown);
    if (i >= 0)
        streams[i].shown = false;
    return was;
}

/* Label values are names from the config: escape \ " and newline anyway. */
static void label(struct evbuffer *out, const char *value)
{
    for (const char *p = value; *p; p++) {
        if (*p == '\\' || *p == '"')
            evbuffer_add_printf(out, "\\%c", *p);
        else if (*p == '\n')
            evbuffer_add(out, "\\n", 2);
        else
            evbuffer_add(out, p, 1);
    }
}

/* One unlabelled sample with its HELP and TYPE lines. */
static void sample(struct evbuffer *out, const char *type, const char *name, const char *help,
                   double value)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type,
                        name, value);
}

static void gauge(struct evbuffer *out, const char *name, const char *help, double value)
{
    sample(out, "gauge", name, help, value);
}

static void counter(struct evbuffer *out, const char *name, const char *help, double value)
{
    sample(out, "counter", name, help, value);
}

/* Query names are libconfig setting names, so need no escaping. */
static void query_seconds(void *arg, const char *name, int64_t alone_us, int64_t behind_us)
{
    struct evbuffer *out = arg;
    const char *sent[] = {"alone", "behind"};
    int64_t us[] = {alone_us, behind_us};
    for (int i = 0; i < 2; i++)
        if (us[i])
            evbuffer_add_printf(out, "jobd_postgres_query_seconds{query=\"%s\",sent=\"%s\"} %g\n",
                                name, sent[i], (double)us[i] / 1e6);
}

/* A gauge per stream: its lag, or its pending count. A lag Redis does not
 * know (nil from Redis 7 when entries past what the group read were
 * deleted; no field before 7) has no sample: -1 would read as a value. Nor
 * has a stream whose last read failed: its old values would read as now. */
static void stream_gauge(struct evbuffer *out, const char *name, const char *help, bool lag)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name);
    for (int i = 0; i < nstreams; i++) {
        if (!streams[i].shown || (lag && streams[i].lag < 0))
            continue;
        evbuffer_add_printf(out, "%s{stream=\"", name);
        label(out, streams[i].name);
        evbuffer_add_printf(out, "\"} %lld\n",
                            (long long)(lag ? streams[i].lag : streams[i].pending));
    }
}

void metrics_render(const struct daemon *d, struct evbuffer *out)
{
    struct runner_counts c;
    runner_counts(d->runner, &c);

    evbuffer_add_printf(out, "# HELP jobd_build_info jobd version.\n# TYPE jobd_build_info gauge\n"
                             "jobd_build_info{version=\"%s\"} 1\n",
                        PACKAGE_VERSION);
    evbuffer_add_printf(out, "# HELP jobd_jobs_total Jobs that reached a final status.\n"
                             "# TYPE jobd_jobs_total counter\n");
    for (int i = 0; i < ntypes; i++)
        for (size_t s = 0; s < NSTATUSES; s++)
            evbuffer_add_printf(out, "jobd_jobs_total{type=\"%s\",status=\"%s\"} %llu\n",
                                types[i].type, job_status_name((enum job_status)s),
                                (unsigned long long)types[i].total[s]);
    evbuffer_add_printf(out, "# HELP jobd_job_duration_seconds Time from a job's last start "
                             "to its final status.\n# TYPE jobd_job_duration_seconds histogram\n");
    for (int i = 0; i < ntypes; i++) {
        uint64_t cumulative = 0;
        for (size_t b = 0; b < NBOUNDS; b++) {
            cumulative += types[i].buckets[b];
            evbuffer_add_printf(out, "jobd_job_duration_seconds_bucket{type=\"%s\",le=\"%g\"} %llu\n",
                                types[i].type, bounds[b], (unsigned long long)cumulative);
        }
        evbuffer_add_printf(out,
                            "jobd_job_duration_seconds_bucket{type=\"%s\",le=\"+Inf\"} %llu\n"
                            "jobd_job_duration_seconds_sum{type=\"%s\"} %.17g\n"
                            "jobd_job_duration_seconds_count{type=\"%s\"} %llu\n",
                            types[i].type, (unsigned long long)types[i].count, types[i].type,
                            types[i].sum, types[i].type, (unsigned long long)types[i].count);
    }
    gauge(out, "jobd_jobs_inflight", "Jobs taken and not yet stored.", c.inflight);
    gauge(out, "jobd_jobs_queued", "Jobs taken beyond limits.max_inflight (one read of several "
          "streams brought more), waiting unstarted for a slot.", c.queued);
    gauge(out, "jobd_jobs_running", "Jobs with an attempt running.", c.running);
    gauge(out, "jobd_outcomes_unstored", "Outcomes waiting for Redis to come back.", c.unstored);
    int lost_outcomes;
    uint64_t lost_stored, lost_not_stored;
    result_lost_counts(&lost_outcomes, &lost_stored, &lost_not_stored);
    gauge(out, "jobd_outcomes_unsettled", "Outcomes whose transaction's reply was lost with the "
          "connection, waiting for Redis to say whether it ran.", lost_outcomes);
    evbuffer_add_printf(out, "# HELP jobd_lost_replies_total Outcome transactions whose reply "
                             "was lost with the connection, by what Redis said when asked.\n"
                             "# TYPE jobd_lost_replies_total counter\n"
                             "jobd_lost_replies_total{found=\"stored\"} %llu\n"
                             "jobd_lost_replies_total{found=\"not_stored\"} %llu\n",
                        (unsigned long long)lost_stored, (unsigned long long)lost_not_stored);
    bool events_refused, stats_refused;
    result_refused_parts(&events_refused, &stats_refused);
    gauge(out, "jobd_events_refused", "1 once Redis refused the PUBLISH of a record on "
          "NS:events (an ACL user without the channel): records are stored without it until "
          "a reload or a restart tries again.", events_refused);
    gauge(out, "jobd_stats_refused", "1 once Redis refused a HINCRBY of NS:stats (an ACL): "
          "outcomes are stored without counting them there until a reload or a restart "
          "tries again.",
          stats_refused);
    gauge(out, "jobd_max_inflight", "limits.max_inflight.", d->cfg.max_inflight);
    gauge(out, "jobd_held_bytes", "Bytes of raw envelope held by the jobs in flight, and what "
          "their group children take.", (double)c.held_bytes);
    gauge(out, "jobd_max_held_bytes", "limits.max_held_bytes.", (double)d->cfg.max_held_bytes);
    gauge(out, "jobd_group_children_running", "Group children (nested groups aside) with an "
          "attempt running, each in a child slot.", c.child_running);
    gauge(out, "jobd_group_children_queued", "Group children waiting unstarted for a child slot "
          "(limits.max_group_children are running).", c.child_queued);
    gauge(out, "jobd_max_group_children", "limits.max_group_children.",
          d->cfg.max_group_children);
    counter(out, "jobd_retries_total", "Attempts that failed transiently and were scheduled again.",
            (double)c.retried);
    counter(out, "jobd_cancels_made_due_total",
            "Cancelled jobs in NS:scheduled made due early, so that they end cancelled.",
            (double)scheduler_pulled(d->scheduler));
    counter(out, "jobd_dead_letters_total", "Jobs written to the dead-letter stream.",
            (double)dead_letters);
    counter(out, "jobd_requeued_total", "Jobs put back on their stream at shutdown.",
            (double)c.requeued);
    counter(out, "jobd_pubsub_parked_total",
            "Pub/sub jobs that found jobd full or draining and were parked on the first stream.",
            (double)intake_overflowed(d->intake));
    gauge(out, "jobd_pubsub_paused", "1 while the job channels are unsubscribed (PUBLISH counts "
          "no receiver here) because Redis refuses to park pub/sub jobs and "
          "limits.max_held_bytes is reached, or jobd drains; NS:control stays subscribed.",
          intake_job_channels_paused(d->intake));
    gauge(out, "jobd_channels_refused", "Channels whose SUBSCRIBE Redis refused (an ACL user "
          "without them): not heard until a reload (SIGHUP) finds them allowed, or jobd "
          "restarts; the log names them.",
          intake_channels_refused(d->intake));
    gauge(out, "jobd_streams_unreadable", "Configured streams left out of the reads and "
          "put-backs because their key refused jobd (a key of another type, say); see the log.",
          intake_unreadable_streams(d->intake));
    gauge(out, "jobd_cancels_remembered", "Job ids cancelled within jobs.cancel_ttl (heard "
          "on NS:control or read from NS:cancels): a job with one of them ends cancelled "
          "unstarted.",
          (double)cancels_count(d->cancels));
    gauge(out, "jobd_threadpool_threads", "Worker threads.", threadpool_size(d->pool));
    gauge(out, "jobd_threadpool_busy", "Worker threads running a task.",
          threadpool_busy(d->pool));
    gauge(out, "jobd_threadpool_queue_depth", "Tasks waiting for a worker thread.",
          threadpool_queued(d->pool));
    counter(out, "jobd_redis_reconnects_total", "Redis reconnections after a failure.",
            (double)redis_reconnects(d->redis));
    counter(out, "jobd_worker_name_collisions_total",
            "Heartbeats that found the worker key written by another running daemon with the "
            "same worker name (set worker.name).",
            (double)heartbeat_collisions(d->heartbeat));
    evbuffer_add_printf(out, "# HELP jobd_redis_connected 1 when the connection is ready.\n"
                             "# TYPE jobd_redis_connected gauge\n");
    for (int r = 0; r < REDIS_NROLES; r++)
        evbuffer_add_printf(out, "jobd_redis_connected{connection=\"%s\"} %d\n",
                            redis_role_name((enum redis_role)r),
                            redis_ready(d->redis, (enum redis_role)r) ? 1 : 0);
    int http_sockets, http_transfers, http_waiting, http_abandoned;
    http_counts(&http_sockets, &http_transfers, &http_waiting, &http_abandoned);
    gauge(out, "jobd_http_connections", "HTTP connections libcurl has open and active.",
          http_sockets);
    gauge(out, "jobd_http_transfers", "HTTP transfers running.", http_transfers);
    gauge(out, "jobd_http_waiting",
          "HTTP jobs waiting for a transfer slot (http.max_connections are running).",
          http_waiting);
    gauge(out, "jobd_http_abandoned_lookups",
          "Name lookups of stopped HTTP transfers still running on libcurl's resolver threads.",
          http_abandoned);
    struct pgpool_counts pg;
    pgpool_counts(d->pgpool, &pg);
    evbuffer_add_printf(out, "# HELP jobd_postgres_connections PostgreSQL pool connections by "
                             "state.\n# TYPE jobd_postgres_connections gauge\n"
                             "jobd_postgres_connections{state=\"busy\"} %d\n"
                             "jobd_postgres_connections{state=\"idle\"} %d\n"
                             "jobd_postgres_connections{state=\"connecting\"} %d\n",
                        pg.busy, pg.idle, pg.connecting);
    gauge(out, "jobd_postgres_waiting", "sql jobs waiting for a free connection.", pg.waiting);
    gauge(out, "jobd_postgres_inflight", "Queries sent and not yet answered (postgres.pipeline "
          "above 1 lets one connection carry several).", pg.inflight);
    counter(out, "jobd_postgres_queries_total", "Queries sent to PostgreSQL.", (double)pg.queries);
    counter(out, "jobd_postgres_reconnects_total", "PostgreSQL connections opened after a failure.",
            (double)pg.reconnects);
    evbuffer_add_printf(out, "# HELP jobd_postgres_query_seconds Moving average of a query's run "
                             "time as jobd measures it (query=\"\" for raw SQL): sent to an "
                             "idle connection, round trip included (sent=alone), or what it added "
                             "to the wait of the queries behind it (sent=behind), which decides "
                             "packing.\n# TYPE jobd_postgres_query_seconds gauge\n");
    pgpool_each_run_time(d->pgpool, query_seconds, out);
    counter(out, "jobd_postgres_probes_total", "Queries sent behind others though their run time "
            "alone was over postgres.pipeline_pack_us, to learn what they add there (at most one "
            "a second per query).", (double)pg.probes);
    int admin_open;
    uint64_t admin_refused;
    admin_counts(d->admin, &admin_open, &admin_refused);
    gauge(out, "jobd_admin_connections", "Connections open to this endpoint.", admin_open);
    counter(out, "jobd_admin_connections_refused_total",
            "Admin connections closed at once: admin.max_connections were open.",
            (double)admin_refused);
    stream_gauge(out, "jobd_stream_lag", "Entries in the stream not yet read by group jobd.",
                 true);
    stream_gauge(out, "jobd_stream_pending",
                 "Entries read by group jobd and not yet acknowledged.", false);
}
