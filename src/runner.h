/* runner.h - owns every job from intake to stored result.
 *
 * The runner parses a message into a job, starts attempts on executors,
 * enforces the per-attempt timeout, applies cancel requests, decides between
 * retry and final result, and on shutdown stops what is left and puts it back
 * on its stream. Executors see none of that: they only do their work.
 */
#ifndef JOBD_RUNNER_H
#define JOBD_RUNNER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "job.h"

struct daemon;
struct runner;

/* One message taken from Redis. Strings are copied by runner_accept. */
struct job_message {
    const char *raw;            /* envelope text (not NUL-terminated) */
    size_t raw_len;
    enum job_source source;
    const char *stream;         /* SOURCE_STREAM */
    const char *entry_id;       /* SOURCE_STREAM */
    /* Extra stream entry fields written by jobd itself when it puts a job back
     * (retry, delay, shutdown); NULL / 0 when absent. */
    const char *id;             /* the job's id, kept across requeues */
    int attempts;               /* attempts already made */
    int64_t queued_at;          /* first time the job was queued */
    int64_t due_ms;             /* the delay was already waited for */
    bool has_due;
    int64_t early_due_ms;       /* made due early by a cancel sweep: its time */
    /* Set when the message could not even be read as one (a stream entry
     * without a "job" field): the job is rejected with this reason. */
    const char *problem;
    /* Delivered too many times without an outcome: fail it without running. */
    int poison_deliveries;
    /* Due in NS:scheduled, but its stream refused it (scheduler.c): fail it
     * without running, for this reason; its dead letter is written already. */
    const char *unrun;
    /* A "job" value longer than jobd reads (redis_loop.h): its length. Its
     * bytes were dropped unread (raw is ""): the job is rejected as
     * too_large. */
    size_t unread_len;
    /* A stream entry with more fields than jobd reads (redis_loop.h): how
     * many. Skipped unread, "job" with them: rejected as too_large, and
     * unread_len is set too (the least RESP they took, 6 bytes a name or
     * value), so the rest goes as for a "job" too long to read. */
    size_t unread_fields;
};

struct runner *runner_create(struct daemon *d);
void runner_free(struct runner *r);

/* Take one message: parse, then run, delay, or reject it. */
void runner_accept(struct runner *r, const struct job_message *msg);

/* A message on NS:control. */
void runner_control(struct runner *r, const char *payload, size_t len);

/* Jobs taken and not yet stored (running, stopping or being written). */
int runner_inflight(const struct runner *r);

/* Bytes of raw envelope those jobs hold (a group's includes its children),
 * the measure limits.max_held_bytes bounds. */
int64_t runner_held_bytes(const struct runner *r);
/* An executor's parse of JOB holds BYTES more than its envelope (an http
 * batch's requests): charged to held_bytes until the job is freed. */
void runner_charge_parsed(struct job *job, int64_t bytes);

/* Redis (the command connection) is up again: write what waited. */
void runner_redis_ready(struct runner *r);

/* Shutdown: stop every running job; each goes back on its stream. */
void runner_stop_all(struct runner *r);

/* A cancel for ID heard on NS:control: remembered and kept in NS:cancels
 * (cancels.h), so that a job that arrives later with that id never starts,
 * and applied to the jobs held now. */
void runner_cancel_id(struct runner *r, const char *id);
/* Stop or end the jobs held now with ID (a cancel heard, or read from
 * NS:cancels). */
void runner_apply_cancel(struct runner *r, const char *id);

/* Does this daemon hold the stream entry (running or writing its outcome)? */
bool runner_holds_entry(const struct runner *r, const char *stream, const char *entry_id);

/* Call FN for every job taken from a stream and held longer than MIN_AGE_MS. */
void runner_foreach_stream_job(const struct runner *r, int64_t min_age_ms,
                               void (*fn)(const struct job *job, void *arg), void *arg);

/* Group children (exec_group.c). A child is owned by its group, not by the
 * runner's list, and its outcome goes to group_child_done() instead of Redis;
 * a child's retries wait on a timer inside the running group. A child that is
 * not a group starts only when one of limits.max_group_children slots is free;
 * until then runner_child_stop() ends it at once, cancelled, unstarted. */
struct job *runner_child_new(struct job *parent, int index, const json_t *envelope,
                             struct job_error *err);
void runner_child_start(struct job *child);
void runner_child_stop(struct job *child);
void runner_child_free(struct job *child);
/* Between these two, a child slot that comes free goes to no waiting child;
 * the release hands out what is free. A group holds while it starts its
 * children (they then start in order, and a failure among the first ends the
 * rest unstarted) and while it stops them (so a slot freed by one of its
 * running children never starts a waiting one only to stop it). Nestable. */
void runner_children_hold(struct runner *r);
void runner_children_release(struct runner *r);

/* For the heartbeat and metrics. */
struct runner_counts {
    int inflight, queued, running, storing, unstored;
    int64_t held_bytes;                 /* runner_held_bytes() */
    int child_running, child_queued;    /* group children in / waiting for a child slot */
    uint64_t accepted, succeeded, failed, rejected, retried, requeued;
};
void runner_counts(const struct runner *r, struct runner_counts *out);

/* A slot came free or limits.max_inflight changed (or the drain began): start
 * jobs queued for a slot (put them back while draining) and group children
 * waiting for a child slot, then let intake read. */
void runner_capacity_changed(struct runner *r);

/* Called by job_succeed()/job_fail(): an attempt ended. */
void runner_attempt_done(struct job *job);

#endif
