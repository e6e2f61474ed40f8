/* threadpool.h - a fixed pool of worker threads for CPU-heavy and blocking work.
 *
 * Tasks go in through mutex-protected bounded queues, one FIFO per owner, and
 * workers serve the owners with tasks waiting in turn, one task each, so one
 * owner's thousand tasks do not hold back everyone else's; finished tasks come back
 * to the event loop through a second queue and an eventfd (memcached's
 * pattern), where their done() runs. Workers never touch hiredis, curl or libpq
 * objects. See doc/threads.md for the locking rules.
 */
#ifndef JOBD_THREADPOOL_H
#define JOBD_THREADPOOL_H

#include <stdatomic.h>
#include <stdbool.h>

#include "list.h"

struct event_base;
struct threadpool;

/* Whom tasks are for: jobd gives every top-level job one, shared by its whole
 * group tree (job_pool_owner()). Zeroed before its first task; must outlive
 * every task of it still waiting. Its fields are the pool's, touched under
 * its lock while the owner has tasks waiting. */
struct pool_owner {
    struct list tasks;          /* waiting, oldest first (pool_task.link) */
    struct list_link turn_link; /* on the pool's rotation while tasks wait */
};

struct pool_task {
    /* Runs on a worker thread. Must poll *cancel often (it is set from the
     * loop) and return promptly once it is non-zero. */
    void (*work)(struct pool_task *task);
    /* Runs on the loop thread after work() returned, or instead of work()
     * when the task was cancelled before a worker picked it up
     * (task->skipped is then true). Owns the task from then on. */
    void (*done)(struct pool_task *task);
    atomic_int *cancel;         /* may be NULL */
    /* Whose turn the task waits for. NULL: the pool's own shared owner
     * (one FIFO for every such task). */
    struct pool_owner *owner;
    bool skipped;
    /* Private to the pool; zeroed before the task's first submit (a cancel
     * of a task never submitted reads waiting_in). */
    struct list_link link;      /* on its owner's queue, or the done queue */
    struct pool_owner *waiting_in;  /* set while it waits for a worker */
};

/* nthreads 0: one per CPU. max_queue: tasks waiting beyond that (all owners
 * together) are refused. */
struct threadpool *threadpool_create(struct event_base *base, int nthreads, int max_queue);
/* 0, or -1 when the queue is full or the pool is stopping. A free worker
 * takes the oldest task of the owner first in turn, and that owner goes to
 * the back of the turn if it has more waiting; an owner joins at the back
 * with its first task waiting. */
int threadpool_submit(struct threadpool *pool, struct pool_task *task);
/* TASK, still waiting for a worker, leaves the queue: its done() runs on the
 * loop soon after (never inside this call) with task->skipped = true, so a
 * timeout or cancel does not wait for every task queued ahead of it. 0 when
 * taken out, -1 when a worker has it already (or it is done): work() then
 * sees *cancel as usual. */
int threadpool_cancel(struct threadpool *pool, struct pool_task *task);
int threadpool_size(const struct threadpool *pool);
int threadpool_queued(struct threadpool *pool);   /* waiting, not started */
int threadpool_busy(struct threadpool *pool);     /* running now */
/* Tasks whose done() has not run yet: waiting, running, or finished and not
 * yet handed to the loop. 0 means no job still has work in the pool. Call
 * from the loop thread. */
int threadpool_unfinished(struct threadpool *pool);
/* Stops the workers after the task each is running, joins them, runs done()
 * of every finished or never-started task (skipped = true for the latter),
 * and frees the pool. Call from the loop thread. */
void threadpool_destroy(struct threadpool *pool);
/* As threadpool_destroy() when no task is running; else -1, and the pool is
 * left as it is (its threads may be blocked for good: the process exits). */
int threadpool_destroy_if_idle(struct threadpool *pool);

#endif
