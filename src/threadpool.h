/* threadpool.h - a fixed pool of worker threads for CPU-heavy and blocking work.
 *
 * Tasks go in through a mutex-protected bounded queue; finished tasks come back
 * to the event loop through a second queue and an eventfd (memcached's
 * pattern), where their done() runs. Workers never touch hiredis, curl or libpq
 * objects. See doc/threads.md for the locking rules.
 */
#ifndef JOBD_THREADPOOL_H
#define JOBD_THREADPOOL_H

#include <stdatomic.h>
#include <stdbool.h>

struct event_base;
struct threadpool;

struct pool_task {
    /* Runs on a worker thread. Must poll *cancel often (it is set from the
     * loop) and return promptly once it is non-zero. */
    void (*work)(struct pool_task *task);
    /* Runs on the loop thread after work() returned, or instead of work()
     * when the task was cancelled before a worker picked it up
     * (task->skipped is then true). Owns the task from then on. */
    void (*done)(struct pool_task *task);
    atomic_int *cancel;         /* may be NULL */
    bool skipped;
    struct pool_task *next;     /* private to the pool */
};

/* nthreads 0: one per CPU. max_queue: tasks waiting beyond that are refused. */
struct threadpool *threadpool_create(struct event_base *base, int nthreads, int max_queue);
/* 0, or -1 when the queue is full or the pool is stopping. */
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
