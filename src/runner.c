/* runner.c - the life of every job (see runner.h).
 *
 * States: NEW -> (QUEUED) -> RUNNING -> (STOPPING) -> STORING -> freed. A job
 * is counted in flight from runner_accept() until its outcome is stored, so
 * intake never takes more than limits.max_inflight, and an outcome waiting
 * for Redis keeps its slot (memory stays bounded while Redis is away). One
 * read of several streams (COUNT applies to each) or a reclaim of several can
 * still bring more than the free slots: those jobs wait unstarted in a queue
 * (JOB_QUEUED), so no more than max_inflight ever run or store at once, and
 * intake, which counts them as taken, reads nothing until they have started.
 *
 * Memory is bounded by bytes too: held_bytes sums the raw envelopes of the
 * jobs counted in flight, from runner_accept() until job_release(), and what
 * each group child takes while it exists (child_cost()); intake reads
 * nothing while it is at limits.max_held_bytes (see intake_room()).
 *
 * Group children are not counted in max_inflight (their top-level group is).
 * Those that do work, every child but a nested group, take one of
 * limits.max_group_children slots while an attempt runs; beyond that they
 * wait unstarted (JOB_QUEUED) in their top-level job's list, and free slots
 * go to those jobs in turn, oldest child first, so one big tree cannot keep
 * every other group waiting. A nested group takes no slot (it only waits for
 * its children), so groups never hold the slots their children need: every
 * slot is freed by an attempt that ends (its own timeout bounds it). A child
 * waiting for a retry holds no slot either.
 */
#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cancels.h"
#include "daemon.h"
#include "envelope.h"
#include "executor.h"
#include "intake.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"
#include "redis_loop.h"
#include "result.h"
#include "runner.h"
#include "scheduler.h"
#include "exec_group.h"
#include "timer.h"

#define BUCKETS 4096
#define REWRITE_AFTER_MS 1000

struct runner {
    struct daemon *d;
    struct list live;               /* every job not yet freed, oldest first */
    struct job *buckets[BUCKETS];   /* live jobs by id (ids may repeat) */
    int inflight, running, storing, unstored;
    int64_t held_bytes;             /* raw envelopes of the jobs in flight */
    struct list queue;              /* top-level JOB_QUEUED (wait_link), oldest first */
    int queued;
    bool starting_queued;           /* start_queued() is on the stack */
    struct list turns;              /* top-level jobs with children waiting (turn_link) */
    int child_running, child_queued;    /* group children holding / waiting for a slot */
    bool starting_children;         /* start_waiting_children() is on the stack */
    int children_held;              /* runner_children_hold() without its release */
    struct event *rewrite_timer;    /* write unstored outcomes again */
    uint64_t accepted, succeeded, failed, rejected, retried, requeued;
    uint64_t next_id;
    char id_prefix[48];
};

static struct job *live_job(const struct list_link *l)
{
    return list_entry(l, struct job, live_link);
}

static unsigned bucket_of(const char *id)
{
    unsigned h = 2166136261u;   /* FNV-1a */
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 16777619u;
    return h % BUCKETS;
}

static void index_add(struct runner *r, struct job *job)
{
    unsigned b = bucket_of(job->id);
    job->hnext = r->buckets[b];
    r->buckets[b] = job;
}

static void index_remove(struct runner *r, struct job *job)
{
    for (struct job **p = &r->buckets[bucket_of(job->id)]; *p; p = &(*p)->hnext)
        if (*p == job) {
            *p = job->hnext;
            return;
        }
}

static void rewrite_cb(evutil_socket_t fd, short what, void *arg);

struct runner *runner_create(struct daemon *d)
{
    struct runner *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->d = d;
    r->rewrite_timer = evtimer_new(d->base, rewrite_cb, r);
    if (!r->rewrite_timer) {
        runner_free(r);
        return NULL;
    }
    /* Generated ids: unique across daemons and restarts without coordination. */
    unsigned char rnd[6] = {0};
    FILE *f = fopen("/dev/urandom", "rb");
    if (f) {
        if (fread(rnd, 1, sizeof(rnd), f) != sizeof(rnd))
            memset(rnd, 0, sizeof(rnd));
        fclose(f);
    }
    snprintf(r->id_prefix, sizeof(r->id_prefix), "%" PRIx64 "-%02x%02x%02x%02x%02x%02x",
             (uint64_t)now_ms(), rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5]);
    return r;
}

static void job_free(struct runner *r, struct job *job)
{
    if (r)
        r->held_bytes -= job->parsed_bytes;
    if (job->exec && job->exec->free)
        job->exec->free(job);
    if (job->timer)
        event_free(job->timer);
    json_decref(job->envelope);
    json_decref(job->spec);
    json_decref(job->result);
    json_decref(job->error_results);
    free(job->raw);
    free(job->stream);
    free(job->reply_to);
    free(job);
}

/* Unlink, free, and give the slot back to intake. */
static void job_release(struct runner *r, struct job *job)
{
    list_remove(&r->live, &job->live_link);
    index_remove(r, job);
    if (job->state == JOB_STORING)
        r->storing--;
    r->held_bytes -= (int64_t)job->raw_len;
    job_free(r, job);
    r->inflight--;
    runner_capacity_changed(r);
}

void runner_free(struct runner *r)
{
    if (!r)
        return;
    while (r->live.head) {
        struct job *job = live_job(r->live.head);
        list_remove(&r->live, &job->live_link);
        job_free(r, job);
    }
    if (r->rewrite_timer)
        event_free(r->rewrite_timer);
    free(r);
}

/* ---- writing outcomes ---------------------------------------------------- */

/* The write could not be sent or was lost with the connection: keep the job
 * (and its slot); runner_redis_ready() writes it again when the connection
 * is back, or a second later when Redis refused it on a live connection. */
static void mark_unstored(struct runner *r, struct job *job)
{
    job->write_waiting = true;
    r->unstored++;
}

static void write_done(struct job *job, bool stored)
{
    struct runner *r = job->d->runner;
    if (!stored) {
        /* Draining, a retry or delay that could not be scheduled goes back
         * on its stream instead: NS:scheduled may be what refuses it (a key
         * of another type), and its entry may be acknowledged already. */
        if (r->d->draining && job->write_kind == WRITE_SCHEDULE)
            job->write_kind = WRITE_REQUEUE;
        mark_unstored(r, job);
        if (!job->write_refused)
            log_job(LOG_WARN, job, "outcome not stored yet (Redis unavailable or refusing "
                                   "writes); will retry");
        job->write_refused = true;
        /* An error reply (out of memory, MISCONF, LOADING) leaves the
         * connection up: no reconnect would write it again. */
        if (!evtimer_pending(r->rewrite_timer, NULL))
            timer_add_ms(r->rewrite_timer, REWRITE_AFTER_MS);
        return;
    }
    switch (job->write_kind) {
    case WRITE_RESULT:
        metrics_job_finished(job);
        if (job->status == JOB_SUCCEEDED)
            r->succeeded++;
        else if (job->status == JOB_REJECTED)
            r->rejected++;
        else
            r->failed++;
        break;
    case WRITE_SCHEDULE:
        /* A retry, not a first delay, nor a wait taken up again. */
        r->retried += job->attempts > 0 && !job->early_due;
        /* Cancelled while this write was on its way or refused: the pass
         * that cancel started may have missed the member. */
        if (cancels_has(r->d->cancels, job->id))
            scheduler_sweep_cancelled(r->d->scheduler);
        break;
    case WRITE_REQUEUE: r->requeued++; break;
    }
    job_release(r, job);
}

static void write_outcome(struct runner *r, struct job *job)
{
    if (job->state != JOB_STORING) {
        job->state = JOB_STORING;
        r->storing++;
    }
    if (result_write(r->d, job, write_done)) {
        mark_unstored(r, job);
        /* Not taken (out of memory, or no connection): written again in a
         * second, or at once when the connection comes back. Without the
         * timer, one refused for memory waited for a reconnect. */
        if (!evtimer_pending(r->rewrite_timer, NULL))
            timer_add_ms(r->rewrite_timer, REWRITE_AFTER_MS);
    }
}

static void rewrite_cb(evutil_socket_t fd, short what, void *arg)
{
    struct runner *r = arg;
    if (redis_ready(r->d->redis, REDIS_CMD))
        runner_redis_ready(r);
}

void runner_redis_ready(struct runner *r)
{
    for (struct list_link *l = r->live.head; l; l = l->next) {
        struct job *job = live_job(l);
        if (!job->write_waiting)
            continue;
        job->write_waiting = false;
        r->unstored--;
        if (result_write(r->d, job, write_done)) {
            mark_unstored(r, job);
            return;     /* the connection went again: wait for the next ready */
        }
    }
}

static void finish(struct runner *r, struct job *job, int kind)
{
    job->write_kind = kind;
    if (kind == WRITE_RESULT) {
        job->finished_at = now_ms();
        if (!job->started_at)
            job->started_at = job->finished_at;
        if (job->status == JOB_SUCCEEDED)
            log_job(LOG_DEBUG, job, "succeeded after %d attempt(s)", job->attempts);
        else if (job->status != JOB_REJECTED)
            log_job(LOG_INFO, job, "%s: %s: %s", job_status_name(job->status),
                    job->error.code ? job->error.code : "?", job->error.message);
    }
    write_outcome(r, job);
}

/* ---- attempts -------------------------------------------------------------- */

static void stop_attempt(struct job *job, enum stop_reason why)
{
    if (job->state != JOB_RUNNING)
        return;
    job->stop = why;
    job->state = JOB_STOPPING;
    atomic_store(&job->cancel_flag, 1);
    job->exec->cancel(job);
}

static void start_attempt(struct runner *r, struct job *job);

static double random01(void)
{
    return (double)random() / ((double)RAND_MAX + 1.0);
}

/* PROTOCOL §2: a transient failure with attempts left is tried again after the
 * backoff, or after the server's Retry-After when that is longer. */
static bool retry_due(const struct job *job, int64_t *delay)
{
    if (job->status == JOB_SUCCEEDED || job->status == JOB_CANCELLED ||
        job->attempts >= job->retry.attempts || !job_error_is_transient(&job->error))
        return false;
    *delay = retry_delay_ms(&job->retry, job->attempts, random01());
    if (job->error.retry_after_ms > *delay)
        *delay = job->error.retry_after_ms;
    return true;
}

/* ---- group children -------------------------------------------------------- */

/* Does this job take a child slot while its attempt runs? */
static bool takes_child_slot(const struct job *job)
{
    return job->source == SOURCE_CHILD && job->exec != &group_executor;
}

/* Put a child at the end of its tree's waiting list; the tree joins the
 * rotation with its first waiting child. */
static void child_wait(struct runner *r, struct job *child)
{
    struct job *root = job_root(child);
    child->state = JOB_QUEUED;
    if (!root->waiting.head)
        list_append(&r->turns, &root->turn_link);
    list_append(&root->waiting, &child->wait_link);
    r->child_queued++;
}

static void child_unwait(struct runner *r, struct job *child)
{
    struct job *root = job_root(child);
    list_remove(&root->waiting, &child->wait_link);
    child->state = JOB_NEW;
    r->child_queued--;
    if (!root->waiting.head)
        list_remove(&r->turns, &root->turn_link);
}

/* Start waiting children while child slots are free: the oldest child of the
 * top-level job whose turn it is, then that job goes to the back. Draining
 * changes nothing here: a running group may still finish within the drain,
 * and when it is stopped its waiting children end with it. */
static void start_waiting_children(struct runner *r)
{
    if (r->starting_children || r->children_held)
        return;     /* a child that ended at once: the loop below goes on */
    r->starting_children = true;
    while (r->turns.head && r->child_running < r->d->cfg.max_group_children) {
        struct job *root = list_entry(r->turns.head, struct job, turn_link);
        struct job *child = list_entry(root->waiting.head, struct job, wait_link);
        child_unwait(r, child);
        if (root->waiting.head) {   /* to the back of the rotation */
            list_remove(&r->turns, &root->turn_link);
            list_append(&r->turns, &root->turn_link);
        }
        start_attempt(r, child);
    }
    r->starting_children = false;
}

void runner_children_hold(struct runner *r)
{
    r->children_held++;
}

void runner_children_release(struct runner *r)
{
    if (--r->children_held == 0)
        start_waiting_children(r);
}

/* A child's next attempt: at once for a nested group, else once a child slot
 * is free and the children that waited before it have had theirs. */
static void child_begin_attempt(struct runner *r, struct job *child)
{
    if (!takes_child_slot(child)) {
        start_attempt(r, child);
        return;
    }
    child_wait(r, child);
    start_waiting_children(r);
    if (child->state == JOB_QUEUED && !r->children_held)    /* held: its group says */
        log_job(LOG_DEBUG, child, "waiting for a group child slot (limits.max_group_children %d)",
                r->d->cfg.max_group_children);
}

/* What a group child costs while it exists, charged to held_bytes: its own
 * struct and re-serialised envelope. The group's raw envelope alone was
 * charged ~90 times too little (10,000 children of ~30 bytes each take
 * ~1.1 KB apiece), so big groups went past limits.max_held_bytes unseen. */
static int64_t child_cost(const struct job *child)
{
    return (int64_t)(sizeof(*child) + child->raw_len + 1);
}

struct job *runner_child_new(struct job *parent, int index, const json_t *envelope,
                             struct job_error *err)
{
    struct job *child = calloc(1, sizeof(*child));
    if (!child || !(child->raw = json_dumps(envelope, JSON_COMPACT))) {
        free(child);
        job_error_set(err, ERR_INTERNAL, "out of memory");
        return NULL;
    }
    child->raw_len = strlen(child->raw);
    child->d = parent->d;
    if (child->d->runner)   /* none in the fuzz targets, which only parse */
        child->d->runner->held_bytes += child_cost(child);
    child->source = SOURCE_CHILD;
    child->parent = parent;
    child->child_index = index;
    child->type = "";
    child->queued_at = parent->queued_at;
    snprintf(child->id, sizeof(child->id), "%.100s:%d", parent->id[0] ? parent->id : "group",
             index);
    struct job_error cerr = {0};
    if (json_object_get(envelope, "id") || json_object_get(envelope, "reply_to") ||
        json_object_get(envelope, "run_at") || json_object_get(envelope, "delay_ms")) {
        job_error_set(&cerr, ERR_INVALID_JOB,
                      "a child job takes no id, reply_to, run_at or delay_ms");
    } else if (envelope_parse(child, &parent->d->cfg, &cerr) == 0) {
        return child;
    }
    job_error_set(err, cerr.code, "group.jobs[%d]: %s", index, cerr.message);
    runner_child_free(child);
    return NULL;
}

static void child_finished(struct job *child);
static void child_end_cancelled(struct job *child, const char *message);

void runner_child_start(struct job *child)
{
    child->attempts = 0;
    child->started_at = child->finished_at = 0;
    child->status = JOB_SUCCEEDED;
    memset(&child->error, 0, sizeof(child->error));
    /* What an earlier attempt of its group kept: a child that now ends
     * without running (cancelled, stopped while waiting) has none. */
    json_decref(child->result);
    child->result = NULL;
    json_decref(child->error_results);
    child->error_results = NULL;
    if (cancels_has(child->d->cancels, child->id)) {
        /* Cancelled by its id while its group waited (delayed, or between
         * the group's attempts): as a job that arrives cancelled. */
        child_end_cancelled(child, "cancelled before it started");
        return;
    }
    child_begin_attempt(child->d->runner, child);
}

static void child_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    struct job *child = arg;
    if (child->state == JOB_WAITING_RETRY)
        child_begin_attempt(child->d->runner, child);
}

static void child_finished(struct job *child)
{
    child->finished_at = now_ms();
    if (!child->started_at)     /* never started: as finish() records it */
        child->started_at = child->finished_at;
    child->state = JOB_NEW;
    group_child_done(child);
}

/* A child that is not running ends here, cancelled. */
static void child_end_cancelled(struct job *child, const char *message)
{
    child->status = JOB_CANCELLED;
    job_error_set(&child->error, ERR_CANCELLED, "%s", message);
    child_finished(child);
}

void runner_child_stop(struct job *child)
{
    if (child->state == JOB_RUNNING) {
        stop_attempt(child, STOP_PARENT);
    } else if (child->state == JOB_STOPPING) {
        /* Already stopping on its own (its timeout): it must now end
         * cancelled, not come back as a timeout with a retry to wait for. */
        child->stop = STOP_PARENT;
    } else if (child->state == JOB_WAITING_RETRY) {
        /* Between attempts: nothing runs, so it ends here, cancelled. */
        evtimer_del(child->timer);
        child_end_cancelled(child, "cancelled by request");
    } else if (child->state == JOB_QUEUED) {
        /* Waiting for a child slot: it ends here, unstarted, with the
         * outcome a running child stopped by its group gets. */
        child_unwait(child->d->runner, child);
        log_job(LOG_DEBUG, child, "stopped while waiting for a group child slot");
        child_end_cancelled(child, child->attempts ? "cancelled by request"
                                                   : "cancelled before it started");
    }
}

void runner_child_free(struct job *child)
{
    if (!child)
        return;
    struct runner *r = child->d->runner;
    if (child->state == JOB_QUEUED)    /* only when the daemon exits mid-group */
        child_unwait(r, child);
    if (r)
        r->held_bytes -= child_cost(child);
    job_free(r, child);
}

/* A child's attempt ended: retry it on a timer or report to its group. */
static void child_attempt_done(struct runner *r, struct job *child)
{
    int64_t delay;
    if (retry_due(child, &delay)) {
        log_job(LOG_INFO, child, "attempt %d failed (%s); retry in %lld ms", child->attempts,
                child->error.code, (long long)delay);
        child->state = JOB_WAITING_RETRY;
        event_assign(child->timer, r->d->base, -1, 0, child_retry_cb, child);
        timer_add_ms(child->timer, delay);
        return;
    }
    child_finished(child);
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct job *job = arg;
    if (timer_early(job->timer, job->deadline))
        return;
    log_job(LOG_INFO, job, "attempt %d timed out after %" PRId64 " ms", job->attempts,
            job->timeout_ms);
    stop_attempt(job, STOP_TIMEOUT);
}

static void start_attempt(struct runner *r, struct job *job)
{
    job->attempts++;
    job->started_at = now_ms();
    job->stop = STOP_NONE;
    atomic_store(&job->cancel_flag, 0);
    job->state = JOB_RUNNING;
    r->running++;
    r->child_running += takes_child_slot(job);
    if (!job->timer)
        job->timer = evtimer_new(r->d->base, timeout_cb, job);
    else
        event_assign(job->timer, r->d->base, -1, 0, timeout_cb, job);
    job->deadline = timer_deadline(job->timeout_ms);
    timer_add_until(job->timer, job->deadline);
    log_job(LOG_DEBUG, job, "attempt %d of %d started (%s)", job->attempts, job->retry.attempts,
            job->exec->type);
    job->exec->start(job);
}

void runner_attempt_done(struct job *job)
{
    struct runner *r = job->d->runner;
    if (job->state != JOB_RUNNING && job->state != JOB_STOPPING) {
        log_job(LOG_ERROR, job, "executor reported an outcome twice; ignored");
        return;
    }
    evtimer_del(job->timer);
    r->running--;

    if (job->stop != STOP_NONE) {
        /* Whatever the executor reported, the runner's reason decides. */
        json_decref(job->result);
        job->result = NULL;
    }
    switch (job->stop) {
    case STOP_SHUTDOWN:
        /* Not an outcome: the attempt is given back, uncounted. */
        job->attempts--;
        log_job(LOG_INFO, job, "stopped by shutdown; back on its stream");
        finish(r, job, WRITE_REQUEUE);
        return;
    case STOP_TIMEOUT:
        job->status = JOB_TIMED_OUT;
        job_error_set(&job->error, ERR_TIMEOUT, "attempt exceeded timeout_ms (%" PRId64 " ms)",
                      job->timeout_ms);
        break;
    case STOP_CANCEL:
    case STOP_PARENT:
        job->status = JOB_CANCELLED;
        job_error_set(&job->error, ERR_CANCELLED, "cancelled by request");
        break;
    case STOP_NONE:
        break;
    }
    if (job->source == SOURCE_CHILD) {
        bool slot = takes_child_slot(job);
        /* The outcome first: in "all" mode a failure ends the waiting
         * siblings rather than giving the slot to one of them. */
        child_attempt_done(r, job);
        if (slot) {
            r->child_running--;
            start_waiting_children(r);
        }
        return;
    }

    int64_t delay;
    if (retry_due(job, &delay)) {
        job->write_due = now_ms() + delay;
        log_job(LOG_INFO, job, "attempt %d failed (%s: %s); retry in %" PRId64 " ms",
                job->attempts, job->error.code, job->error.message, delay);
        finish(r, job, WRITE_SCHEDULE);
        return;
    }
    finish(r, job, WRITE_RESULT);
}

/* ---- intake ---------------------------------------------------------------- */

static int64_t entry_time(const char *entry_id)
{
    return entry_id ? strtoll(entry_id, NULL, 10) : 0;
}

static void proceed(struct runner *r, struct job *job);

void runner_accept(struct runner *r, const struct job_message *msg)
{
    struct daemon *d = r->d;
    struct job *job = calloc(1, sizeof(*job));
    if (job)
        job->raw = malloc(msg->raw_len + 1);
    if (!job || !job->raw) {
        /* Not acknowledged: a stream entry stays pending and is redelivered. */
        log_error("out of memory taking a job; left unacknowledged");
        free(job);
        return;
    }
    memcpy(job->raw, msg->raw, msg->raw_len);
    job->raw[msg->raw_len] = '\0';
    job->raw_len = msg->raw_len;
    job->unread_len = msg->unread_len;
    job->d = d;
    job->source = msg->source;
    job->type = "";
    if (msg->source == SOURCE_STREAM) {
        job->stream = strdup(msg->stream);
        snprintf(job->entry_id, sizeof(job->entry_id), "%s", msg->entry_id);
    }
    job->attempts = msg->attempts;
    int64_t now = now_ms();
    job->queued_at = msg->queued_at ? msg->queued_at
                     : msg->source == SOURCE_STREAM ? entry_time(msg->entry_id) : now;
    /* An entry id is what its producer made it: one XADD with an explicit id
     * far ahead makes every later "*" id on that stream as far ahead, which
     * would park every delay_ms job behind it for as long. A queue time
     * after now (or none) is not one: take now. */
    if (job->queued_at <= 0 || job->queued_at > now)
        job->queued_at = now;
    job->taken_mono = mono_ms();
    job->timeout_ms = d->cfg.timeout_ms;
    job->retry = d->cfg.retry;
    job->result_ttl = d->cfg.result_ttl;

    list_append(&r->live, &job->live_link);
    r->inflight++;
    r->held_bytes += (int64_t)job->raw_len;
    r->accepted++;

    struct job_error err = {0};
    int rc = -1;
    if (msg->problem)
        job_error_set(&err, ERR_INVALID_JOB, "%s", msg->problem);
    else if (msg->unread_fields)
        job_error_set(&err, ERR_TOO_LARGE,
                      "stream entry has %zu fields, more than the %d jobd reads; none was read",
                      msg->unread_fields, REDIS_LOOP_MAX_ENTRY_FIELDS);
    else if (msg->unread_len)
        envelope_too_large(msg->unread_len, &d->cfg, &err);
    else
        rc = envelope_parse(job, &d->cfg, &err);
    /* The id: the envelope's, else the one jobd kept across a requeue, else
     * the stream entry id, else a generated one. */
    if (!job->id[0] && msg->id && envelope_valid_id(msg->id, strlen(msg->id)))
        snprintf(job->id, sizeof(job->id), "%s", msg->id);
    if (!job->id[0] && rc == 0) {
        if (msg->source == SOURCE_STREAM)
            snprintf(job->id, sizeof(job->id), "%s", msg->entry_id);
        else
            snprintf(job->id, sizeof(job->id), "%s-%" PRIu64, r->id_prefix, ++r->next_id);
    }
    index_add(r, job);

    if (rc) {
        /* Not a valid envelope: rejected. A valid one whose request is refused
         * (a path out of files.root, a backend that is off) failed instead. */
        bool refused = !strcmp(err.code, ERR_FORBIDDEN) || !strcmp(err.code, ERR_UNAVAILABLE);
        job->status = refused ? JOB_FAILED : JOB_REJECTED;
        job->error = err;
        if (!refused)
            log_warn("rejected a %s message%s%s: %s: %s",
                     msg->source == SOURCE_STREAM ? "stream" : "pub/sub",
                     job->id[0] ? " with id " : "", job->id, err.code, err.message);
        finish(r, job, WRITE_RESULT);
        return;
    }
    if (msg->poison_deliveries) {
        job->status = JOB_FAILED;
        job_error_set(&job->error, ERR_INTERNAL,
                      "delivered %d times without an outcome (poison job?); not run again",
                      msg->poison_deliveries);
        finish(r, job, WRITE_RESULT);
        return;
    }
    if (msg->unrun) {
        job->status = JOB_FAILED;
        job_error_set(&job->error, ERR_INTERNAL, "%s", msg->unrun);
        job->dead_written = true;
        finish(r, job, WRITE_RESULT);
        return;
    }
    job->delay_waited = msg->has_due;
    /* "early_due" is jobd's own field (write_requeue()), but a producer can
     * write it too: a time past any run_at parked the job where the cancel
     * sweep does not look, for ever. */
    if (msg->early_due_ms > ENVELOPE_MAX_RUN_AT_MS)
        log_job(LOG_WARN, job, "stream entry field early_due %" PRId64 " is past any run_at "
                "(%lld); ignored", msg->early_due_ms, ENVELOPE_MAX_RUN_AT_MS);
    else if (msg->early_due_ms > now_ms())
        job->early_due = msg->early_due_ms;
    /* A reclaimed entry runs again, whatever NS:result holds under its id:
     * a job's record and its entry's XACK go in one transaction, so a
     * pending entry has no record of its own, and one found under its id is
     * another job's (an id a producer reused, or the same entry id on another
     * stream). Skipping it as "already finished" lost the job. */
    proceed(r, job);
}

/* Jobs holding a slot: taken, and not waiting in the queue for one. */
static int slots_taken(const struct runner *r)
{
    return r->inflight - r->queued;
}

/* After parsing: requeue while draining, honour a remembered cancel, park a
 * delayed job, wait for a slot, or start. */
static void proceed(struct runner *r, struct job *job)
{
    struct daemon *d = r->d;
    /* A remembered cancel first: put back by a drain, the job would go to a
     * daemon that never heard the cancel, and run. */
    if (cancels_has(d->cancels, job->id)) {
        job->status = JOB_CANCELLED;
        job_error_set(&job->error, ERR_CANCELLED, "cancelled before it started");
        finish(r, job, WRITE_RESULT);
        return;
    }
    if (job->early_due) {
        /* Made due early for a cancel this daemon does not remember, or put
         * back by a drain that could not schedule it: it waits again for
         * its time, also while draining (should NS:scheduled refuse it then,
         * it goes back on its stream with that time: write_requeue()). Not
         * counted as a retry. */
        log_job(LOG_INFO, job, "read before its time (in %" PRId64 " ms), and not cancelled "
                "here; scheduled again", job->early_due - now_ms());
        job->write_due = job->early_due;
        finish(r, job, WRITE_SCHEDULE);
        return;
    }
    if (d->draining) {
        /* Delivered by a read that was in flight when the drain began. */
        finish(r, job, WRITE_REQUEUE);
        return;
    }
    if (job->due_ms > now_ms() && !job->delay_waited) {
        job->write_due = job->due_ms;
        finish(r, job, WRITE_SCHEDULE);
        return;
    }
    if (slots_taken(r) > d->cfg.max_inflight) {
        /* Every slot is taken by jobs that started before it. */
        job->state = JOB_QUEUED;
        list_append(&r->queue, &job->wait_link);
        r->queued++;
        log_job(LOG_DEBUG, job, "waiting for a slot (limits.max_inflight %d)", d->cfg.max_inflight);
        return;
    }
    start_attempt(r, job);
}

static void unqueue(struct runner *r, struct job *job)
{
    list_remove(&r->queue, &job->wait_link);
    job->state = JOB_NEW;
    r->queued--;
}

/* Start queued jobs while slots are free; while draining, every one of them
 * (proceed() puts them back on their stream). */
static void start_queued(struct runner *r)
{
    if (r->starting_queued)
        return;     /* a job that ended at once: the loop below goes on */
    r->starting_queued = true;
    while (r->queue.head &&
           (r->d->draining || slots_taken(r) < r->d->cfg.max_inflight)) {
        struct job *job = list_entry(r->queue.head, struct job, wait_link);
        unqueue(r, job);
        proceed(r, job);
    }
    r->starting_queued = false;
}

void runner_capacity_changed(struct runner *r)
{
    start_queued(r);
    start_waiting_children(r);  /* limits.max_group_children may have grown */
    intake_capacity_changed(r->d->intake);
    daemon_check_drained(r->d);
}

/* ---- control --------------------------------------------------------------- */

/* The group child named ID ("<group id>:<index>", as its record names it)
 * in a group that runs here, nested as deep as groups go; or NULL. Children
 * are not in the id index: a group's id is, and ids may hold ':' too. */
static struct job *find_child(struct runner *r, const char *id, int depth)
{
    const char *colon = strrchr(id, ':');
    /* The index as the record writes it: digits, no leading zero ("g:01"
     * may be a job of its own, and is not child 1 of "g"). */
    if (!colon || colon == id || depth > GROUP_MAX_DEPTH || !colon[1] ||
        strspn(colon + 1, "0123456789") != strlen(colon + 1) || strlen(colon + 1) > 4 ||
        (colon[1] == '0' && colon[2]))
        return NULL;
    char parent_id[sizeof(((struct job *)NULL)->id)];
    snprintf(parent_id, sizeof(parent_id), "%.*s", (int)(colon - id), id);
    int index = atoi(colon + 1);
    /* A top-level job with the parent's id that is not a group (ids are the
     * producers' to choose) must not hide the group child further down. */
    for (struct job *job = r->buckets[bucket_of(parent_id)]; job; job = job->hnext) {
        struct job *child = job->state == JOB_RUNNING && !strcmp(job->id, parent_id)
                                ? group_child(job, index)
                                : NULL;
        if (child)
            return child;
    }
    struct job *parent = find_child(r, parent_id, depth + 1);
    return parent && parent->state == JOB_RUNNING ? group_child(parent, index) : NULL;
}

void runner_apply_cancel(struct runner *r, const char *id)
{
    /* Its job may wait in NS:scheduled past the cancel's TTL. */
    scheduler_sweep_cancelled(r->d->scheduler);
    int found = 0;
    for (struct job *job = r->buckets[bucket_of(id)]; job; job = job->hnext) {
        if (strcmp(job->id, id) != 0)
            continue;
        found++;
        if (job->state == JOB_RUNNING) {
            log_job(LOG_INFO, job, "cancel requested");
            stop_attempt(job, STOP_CANCEL);
        } else if (job->state == JOB_QUEUED) {
            unqueue(r, job);
            proceed(r, job);    /* the cancel is remembered: ends cancelled */
        }
    }
    /* As well as a top-level job of that id: README says a cancel of "x:1"
     * reaches child 1 of a group "x" too. */
    struct job *child = find_child(r, id, 1);
    if (child) {
        /* Only this child: in "settle" mode the others go on, in "all" mode
         * its group fails as for any child that fails. */
        log_job(LOG_INFO, child, "cancel requested (a group child)");
        runner_child_stop(child);
    } else if (!found) {
        log_debug("cancel for %s: not running here", id);
    }
}

void runner_cancel_id(struct runner *r, const char *id)
{
    cancels_heard(r->d->cancels, id);
    runner_apply_cancel(r, id);
}

void runner_control(struct runner *r, const char *payload, size_t len)
{
    json_error_t jerr;
    json_t *msg = json_loadb(payload, len, 0, &jerr);
    const char *cmd = NULL, *id = NULL;
    /* Anyone who can publish may flood NS:control: at most 10 such
     * warnings a second reach the log. */
    static struct log_limit ignored = LOG_LIMIT("control: ignored message(s)", 10);
    if (!msg || json_unpack(msg, "{s:s, s?s}", "cmd", &cmd, "id", &id) != 0) {
        if (log_limit_allow(&ignored))
            log_warn("control: unreadable message ignored (%s)",
                     msg ? "needs \"cmd\"" : jerr.text);
    } else if (!strcmp(cmd, "cancel")) {
        if (id && envelope_valid_id(id, strlen(id)))
            runner_cancel_id(r, id);
        else if (log_limit_allow(&ignored))
            log_warn("control: cancel needs a valid \"id\"");
    } else {
        if (log_limit_allow(&ignored))
            log_warn("control: unknown command \"%.32s\" ignored", cmd);
    }
    json_decref(msg);
}

/* ---- shutdown and counters ------------------------------------------------- */

void runner_stop_all(struct runner *r)
{
    struct list_link *l = r->live.head;
    while (l) {
        /* The executor may finish synchronously; read next first. */
        struct job *job = live_job(l);
        l = l->next;
        if (job->state == JOB_RUNNING)
            stop_attempt(job, STOP_SHUTDOWN);
    }
}

bool runner_holds_entry(const struct runner *r, const char *stream, const char *entry_id)
{
    for (const struct list_link *l = r->live.head; l; l = l->next) {
        const struct job *job = live_job(l);
        if (job->source == SOURCE_STREAM && !strcmp(job->entry_id, entry_id) &&
            !strcmp(job->stream, stream))
            return true;
    }
    return false;
}

void runner_foreach_stream_job(const struct runner *r, int64_t min_age_ms,
                               void (*fn)(const struct job *job, void *arg), void *arg)
{
    int64_t now = mono_ms();
    for (const struct list_link *l = r->live.head; l; l = l->next) {
        const struct job *job = live_job(l);
        if (job->source == SOURCE_STREAM && now - job->taken_mono >= min_age_ms)
            fn(job, arg);
    }
}

int runner_inflight(const struct runner *r)
{
    return r->inflight;
}

int64_t runner_held_bytes(const struct runner *r)
{
    return r->held_bytes;
}

void runner_charge_parsed(struct job *job, int64_t bytes)
{
    struct runner *r = job->d->runner;
    if (!r)     /* the fuzz targets parse without one */
        return;
    r->held_bytes += bytes;
    job->parsed_bytes += bytes;
}

void runner_counts(const struct runner *r, struct runner_counts *out)
{
    out->inflight = r->inflight;
    out->held_bytes = r->held_bytes;
    out->queued = r->queued;
    out->running = r->running;
    out->storing = r->storing;
    out->unstored = r->unstored;
    out->accepted = r->accepted;
    out->succeeded = r->succeeded;
    out->failed = r->failed;
    out->rejected = r->rejected;
    out->retried = r->retried;
    out->requeued = r->requeued;
    out->child_running = r->child_running;
    out->child_queued = r->child_queued;
}
