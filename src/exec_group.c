/* exec_group.c - the "group" type (PROTOCOL §3): structured concurrency.
 *
 * Children are whole jobs (their own type, timeout and retries) owned by the
 * group; the runner runs their attempts but hands their outcomes here, never
 * to Redis. "settle" waits for every child and succeeds with all outcomes;
 * "all" fails on the first failure and stops the rest, like Python's
 * TaskGroup. The group's own timeout or cancel stops every child, and the
 * group reports only once all of them have stopped.
 *
 * "Concurrently" within limits.max_group_children: the runner starts a child
 * that is not a group only when a child slot is free (runner.c), so starting
 * a child may leave it waiting, and stopping a waiting child ends it at once,
 * cancelled and unstarted. Either way its outcome comes back here.
 *
 * Children's outcomes stay in memory until their group reports, and the
 * top-level group's record holds them all, so the top-level group keeps a
 * running size of the records its tree's children have kept: once past
 * limits.max_record_bytes, that record could never be stored, and the whole
 * tree ends at once as too_large instead of running (and keeping) the rest.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "exec_group.h"
#include "executor.h"
#include "log.h"
#include "result.h"
#include "runner.h"

struct group_state {
    struct job **children;
    int nchildren;
    bool all;                   /* mode "all" */
    int running;                /* children not finished in this attempt */
    int first_failure;          /* index, -1 when none */
    bool stopping;              /* children are being stopped */
    bool reported;              /* this attempt's outcome was given */
    /* The top-level group only: what its tree's children's records add up
     * to (each child's kept_bytes), and whether that passed
     * limits.max_record_bytes in this attempt. */
    int64_t tree_bytes;
    bool too_large;
};

static struct group_state *tree_state(struct job *job)
{
    return job_root(job)->exec_state;
}

static int depth_of(const struct job *job)
{
    int depth = 1;
    for (const struct job *p = job->parent; p; p = p->parent)
        depth++;
    return depth;
}

/* Jobs in a "jobs" list, nested groups' children included. */
static size_t count_jobs(const json_t *jobs)
{
    size_t n = json_array_size(jobs), i;
    json_t *child;
    json_array_foreach(jobs, i, child) {
        const char *type = json_string_value(json_object_get(child, "type"));
        if (type && !strcmp(type, "group") && n <= GROUP_MAX_TOTAL)
            n += count_jobs(json_object_get(child, "jobs"));
    }
    return n;
}

static int group_parse(struct job *job, const json_t *spec, struct job_error *err)
{
    static const char *const fields[] = {"jobs", "mode", NULL};
    if (spec_check_fields(spec, "group", fields, err))
        return -1;
    json_t *jobs = json_object_get(spec, "jobs");
    json_t *mode = json_object_get(spec, "mode");
    if (!json_is_array(jobs) || json_array_size(jobs) < 1 ||
        json_array_size(jobs) > GROUP_MAX_CHILDREN) {
        job_error_set(err, ERR_INVALID_JOB, "group.jobs: must be a list of 1..%d envelopes",
                      GROUP_MAX_CHILDREN);
        return -1;
    }
    bool all = false;
    if (mode) {
        const char *m = json_string_value(mode);
        if (m && !strcmp(m, "all"))
            all = true;
        else if (!m || strcmp(m, "settle")) {
            job_error_set(err, ERR_INVALID_JOB, "group.mode: must be settle or all");
            return -1;
        }
    }
    if (depth_of(job) >= GROUP_MAX_DEPTH) {
        /* depth_of() counts the group itself from 0: GROUP_MAX_DEPTH - 1
         * groups, one inside the other, the top-level one included. */
        job_error_set(err, ERR_INVALID_JOB, "group: groups nest at most %d deep",
                      GROUP_MAX_DEPTH - 1);
        return -1;
    }
    /* Bound the whole tree, not just this level, before building any of it. */
    if (!job->parent && count_jobs(jobs) > GROUP_MAX_TOTAL) {
        job_error_set(err, ERR_INVALID_JOB, "group: too many jobs in one tree (at most %d)",
                      GROUP_MAX_TOTAL);
        return -1;
    }
    struct group_state *st = calloc(1, sizeof(*st));
    size_t n = json_array_size(jobs);
    if (!st || !(st->children = calloc(n, sizeof(*st->children)))) {
        free(st);
        job_error_set(err, ERR_INTERNAL, "out of memory");
        return -1;
    }
    st->all = all;
    job->exec_state = st;
    for (size_t i = 0; i < n; i++) {
        json_t *child = json_array_get(jobs, i);
        if (!json_is_object(child)) {
            job_error_set(err, ERR_INVALID_JOB, "group.jobs[%zu]: must be an object", i);
            return -1;      /* group_free() releases what was built */
        }
        st->children[i] = runner_child_new(job, (int)i, child, err);
        if (!st->children[i])
            return -1;
        st->nchildren++;
    }
    return 0;
}

static void stop_children(struct job *job, struct group_state *st)
{
    st->stopping = true;
    runner_children_hold(job->d->runner);
    for (int i = 0; i < st->nchildren; i++)
        runner_child_stop(st->children[i]);
    runner_children_release(job->d->runner);
}

/* Every child's record, in input order, and how many succeeded. */
static json_t *child_records(const struct job *job, const struct group_state *st, int *succeeded)
{
    json_t *results = json_array();
    *succeeded = 0;
    for (int i = 0; i < st->nchildren; i++) {
        json_t *rec = result_record(job->d, st->children[i]);
        if (!rec)   /* keep its place: the results are in input order */
            rec = json_pack("{s:s, s:s, s:{s:s, s:s}}", "id", st->children[i]->id, "status",
                            job_status_name(st->children[i]->status), "error", "code",
                            ERR_INTERNAL, "message",
                            "this child's record could not be rebuilt (nested too deep)");
        /* The worker is the group's: no need to repeat it per child. */
        json_object_del(rec, "worker");
        json_array_append_new(results, rec);
        *succeeded += st->children[i]->status == JOB_SUCCEEDED;
    }
    return results;
}

static void report(struct job *job)
{
    struct group_state *st = job->exec_state;
    struct group_state *top = tree_state(job);
    if (top->too_large) {
        /* No records built: they are what would not fit. A nested group
         * ends so too; the runner then says cancelled (stopped by its
         * parent). */
        job_fail(job, ERR_TOO_LARGE, "the children's records add up to %" PRId64 " bytes or "
                 "more, over limits.max_record_bytes (%" PRId64 "): the group was stopped",
                 top->tree_bytes, job->d->cfg.max_record_bytes);
        return;
    }
    int succeeded;
    json_t *results = child_records(job, st, &succeeded);
    if (st->all && st->first_failure >= 0) {
        struct job *c = st->children[st->first_failure];
        /* The group failed because of this child: say which, keep its code,
         * status and SQLSTATE; the child's Retry-After was for the child. */
        struct job_error e = c->error;
        if (!e.code)
            e.code = ERR_INTERNAL;
        e.retry_after_ms = 0;
        snprintf(e.message, sizeof(e.message), "group.jobs[%d] %s: %.480s", st->first_failure,
                 job_status_name(c->status), c->error.message);
        /* What the others did still matters (a webhook already sent): the
         * record's error carries every child's record too. */
        json_decref(job->error_results);
        job->error_results = results;
        job_fail_with(job, &e);
        return;
    }
    if (st->stopping) {
        json_decref(job->error_results);
        job->error_results = results;
        job_fail(job, ERR_CANCELLED, "group stopped");
        return;
    }
    job_succeed(job, json_pack("{s:o, s:i, s:i}", "results", results, "succeeded", succeeded,
                               "failed", st->nchildren - succeeded));
}

/* CHILD's kept outcome, and its children's for a nested group: the tree
 * ended too_large, nothing will be built from them. */
static void drop_outcome(struct job *child)
{
    json_decref(child->result);
    child->result = NULL;
    json_decref(child->error_results);
    child->error_results = NULL;
    struct group_state *st = child->exec == &group_executor ? child->exec_state : NULL;
    for (int i = 0; st && i < st->nchildren; i++)
        drop_outcome(st->children[i]);
}

/* GROUP starts an attempt: what its children (nested ones too) kept before
 * no longer counts in TOP's total. */
static void forget_outcomes(struct group_state *top, struct job *group)
{
    struct group_state *st = group->exec_state;
    for (int i = 0; i < st->nchildren; i++) {
        struct job *c = st->children[i];
        top->tree_bytes -= c->kept_bytes;
        c->kept_bytes = 0;
        if (c->exec == &group_executor && c->exec_state)
            forget_outcomes(top, c);
    }
}

/* Count CHILD's record, now final, in its tree's total (a nested group's
 * record is its children's, counted already, and a few fields). Past
 * limits.max_record_bytes, end the tree: stop every child still running or
 * waiting, and free what the finished ones kept. */
static void keep_outcome(struct job *child)
{
    struct job *root = job_root(child);
    struct group_state *top = root->exec_state;
    if (top->too_large) {
        drop_outcome(child);
        return;
    }
    if (child->exec == &group_executor)
        return;
    child->kept_bytes = (int64_t)result_record_size(child->d, child);
    top->tree_bytes += child->kept_bytes;
    int64_t max = child->d->cfg.max_record_bytes;
    if (top->tree_bytes <= max)
        return;
    top->too_large = true;
    log_job(LOG_WARN, root, "its children's records add up to %" PRId64 " bytes, over "
            "limits.max_record_bytes (%" PRId64 "): stopping the group, too_large",
            top->tree_bytes, max);
    for (int i = 0; i < top->nchildren; i++)
        drop_outcome(top->children[i]);
    if (!top->stopping)
        stop_children(root, top);
}

void group_child_done(struct job *child)
{
    struct job *job = child->parent;
    struct group_state *st = job->exec_state;
    st->running--;
    /* May stop the whole tree, this group included. */
    keep_outcome(child);
    if (child->status != JOB_SUCCEEDED && st->all && st->first_failure < 0 && !st->stopping) {
        st->first_failure = child->child_index;
        stop_children(job, st);
    }
    /* Stopping the others above may already have finished the group. */
    if (st->running == 0 && !st->reported) {
        st->reported = true;
        report(job);
    }
}

static void group_start(struct job *job)
{
    struct group_state *st = job->exec_state;
    st->running = st->nchildren;
    st->first_failure = -1;
    st->stopping = false;
    st->reported = false;
    forget_outcomes(tree_state(job), job);
    if (!job->parent)
        st->too_large = false;
    /* Held, children that take a slot only join the wait (oldest first) and
     * start on the release. A nested group starts at once and may finish
     * synchronously (and even end this group in "all" mode); later children
     * are then stopped at once: waiting ones end unstarted. */
    runner_children_hold(job->d->runner);
    for (int i = 0; i < st->nchildren; i++) {
        runner_child_start(st->children[i]);
        if (st->stopping)
            runner_child_stop(st->children[i]);
    }
    runner_children_release(job->d->runner);
    int waiting = 0;
    for (int i = 0; i < st->nchildren; i++)
        waiting += st->children[i]->state == JOB_QUEUED;
    if (waiting)
        log_job(LOG_DEBUG, job,
                "%d of %d children wait for a group child slot "
                "(limits.max_group_children %d)",
                waiting, st->nchildren, job->d->cfg.max_group_children);
}

static void group_cancel(struct job *job)
{
    struct group_state *st = job->exec_state;
    if (st->running > 0)
        stop_children(job, st);
}

struct job *group_child(struct job *group, int index)
{
    if (group->exec != &group_executor || !group->exec_state)
        return NULL;
    struct group_state *st = group->exec_state;
    return index >= 0 && index < st->nchildren ? st->children[index] : NULL;
}

static void group_free(struct job *job)
{
    struct group_state *st = job->exec_state;
    if (!st)
        return;
    for (int i = 0; i < st->nchildren; i++)
        runner_child_free(st->children[i]);
    free(st->children);
    free(st);
    job->exec_state = NULL;
}

const struct executor group_executor = {
    .type = "group",
    .parse = group_parse,
    .start = group_start,
    .cancel = group_cancel,
    .free = group_free,
};
