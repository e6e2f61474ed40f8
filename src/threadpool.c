/* threadpool.c - worker threads for CPU-heavy and blocking work.
 *
 * memcached's pattern (thread.c): tasks wait in mutex-protected FIFOs;
 * finished tasks go to a second mutex-protected queue, and the worker that
 * makes it non-empty writes an eventfd the loop watches; the loop then drains
 * the whole queue and runs each done() on its own thread. Locking rules are in
 * doc/threads.md.
 *
 * Waiting tasks are kept per owner (a top-level job and its group tree), and
 * the owners with tasks waiting take turns, one task each: with one FIFO a
 * group of 1,000 long hash children queued first held every other job behind
 * all of them. Every step is O(1) and allocates nothing: the queues are
 * intrusive lists in the tasks and owners.
 */
#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"
#include "threadpool.h"

struct threadpool {
    int nthreads;
    pthread_t *threads;
    int max_queue;

    pthread_mutex_t lock;       /* guards the owners' queues, turns, queued, busy, stopping */
    pthread_cond_t wake;
    struct list turns;          /* owners with tasks waiting, next to serve first */
    struct pool_owner shared;   /* the owner of tasks submitted without one */
    int queued;                 /* tasks waiting, every owner's */
    int busy;
    bool stopping;

    pthread_mutex_t done_lock;  /* guards done, done_length */
    struct list done;
    int done_length;
    int efd;
    struct event *done_event;
};

static struct pool_task *task_of(struct list_link *l)
{
    return l ? list_entry(l, struct pool_task, link) : NULL;
}

/* do_*: the caller holds pool->lock. */
static void do_enqueue(struct threadpool *pool, struct pool_task *t)
{
    struct pool_owner *o = t->owner ? t->owner : &pool->shared;
    if (!o->tasks.head)
        list_append(&pool->turns, &o->turn_link);
    list_append(&o->tasks, &t->link);
    t->waiting_in = o;
    pool->queued++;
}

static void do_dequeue(struct threadpool *pool, struct pool_task *t)
{
    struct pool_owner *o = t->waiting_in;
    list_remove(&o->tasks, &t->link);
    if (!o->tasks.head)
        list_remove(&pool->turns, &o->turn_link);
    t->waiting_in = NULL;
    pool->queued--;
}

/* The oldest task of the owner first in turn; that owner goes to the back if
 * it has more. NULL when nothing waits. */
static struct pool_task *do_take(struct threadpool *pool)
{
    if (!pool->turns.head)
        return NULL;
    struct pool_owner *o = list_entry(pool->turns.head, struct pool_owner, turn_link);
    struct pool_task *t = task_of(o->tasks.head);
    do_dequeue(pool, t);
    if (o->tasks.head && pool->turns.tail != &o->turn_link) {
        list_remove(&pool->turns, &o->turn_link);
        list_append(&pool->turns, &o->turn_link);
    }
    return t;
}

static void hand_back(struct threadpool *pool, struct pool_task *t)
{
    pthread_mutex_lock(&pool->done_lock);
    bool was_empty = pool->done_length == 0;
    list_append(&pool->done, &t->link);
    pool->done_length++;
    pthread_mutex_unlock(&pool->done_lock);
    if (was_empty) {
        uint64_t one = 1;
        ssize_t w = write(pool->efd, &one, sizeof(one));
        (void)w;    /* EAGAIN: the counter is already non-zero, the loop will wake */
    }
}

int threadpool_cancel(struct threadpool *pool, struct pool_task *task)
{
    pthread_mutex_lock(&pool->lock);
    bool waiting = task->waiting_in != NULL;
    if (waiting)
        do_dequeue(pool, task);
    pthread_mutex_unlock(&pool->lock);
    if (!waiting)
        return -1;
    task->skipped = true;
    hand_back(pool, task);  /* done() from the loop, as for every task */
    return 0;
}

static void *worker_main(void *arg)
{
    struct threadpool *pool = arg;
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        while (!pool->stopping && pool->queued == 0)
            pthread_cond_wait(&pool->wake, &pool->lock);
        if (pool->stopping)
            break;
        struct pool_task *t = do_take(pool);
        pool->busy++;
        pthread_mutex_unlock(&pool->lock);

        t->skipped = t->cancel && atomic_load(t->cancel);
        if (!t->skipped)
            t->work(t);
        hand_back(pool, t);

        pthread_mutex_lock(&pool->lock);
        pool->busy--;
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

static void run_done(struct threadpool *pool)
{
    pthread_mutex_lock(&pool->done_lock);
    struct list q = pool->done;
    pool->done = (struct list){0};
    pool->done_length = 0;
    pthread_mutex_unlock(&pool->done_lock);
    struct pool_task *t;
    while ((t = task_of(q.head))) {
        list_remove(&q, &t->link);  /* before done(), which owns the task */
        t->done(t);
    }
}

static void done_cb(evutil_socket_t fd, short what, void *arg)
{
    struct threadpool *pool = arg;
    uint64_t count;
    ssize_t r = read(pool->efd, &count, sizeof(count));
    (void)r;
    run_done(pool);
}

struct threadpool *threadpool_create(struct event_base *base, int nthreads, int max_queue)
{
    struct threadpool *pool = calloc(1, sizeof(*pool));
    if (!pool)
        return NULL;
    if (nthreads <= 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        nthreads = cpus > 0 ? (int)cpus : 1;
    }
    pool->nthreads = nthreads;
    pool->max_queue = max_queue;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_mutex_init(&pool->done_lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pool->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    pool->threads = calloc((size_t)nthreads, sizeof(*pool->threads));
    if (pool->efd < 0 || !pool->threads)
        goto fail;
    pool->done_event = event_new(base, pool->efd, EV_READ | EV_PERSIST, done_cb, pool);
    if (!pool->done_event || event_add(pool->done_event, NULL))
        goto fail;

    /* Workers start with every signal blocked: signals belong to the loop. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int started = 0, err = 0;
    for (; started < nthreads; started++)
        if ((err = pthread_create(&pool->threads[started], NULL, worker_main, pool)))
            break;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        log_error("thread pool: cannot start thread %d: %s", started + 1, strerror(err));
        pool->nthreads = started;
        threadpool_destroy(pool);
        return NULL;
    }
    return pool;

fail:
    if (pool->done_event)
        event_free(pool->done_event);
    if (pool->efd >= 0)
        close(pool->efd);
    free(pool->threads);
    free(pool);
    return NULL;
}

int threadpool_submit(struct threadpool *pool, struct pool_task *task)
{
    int rc = -1;
    task->skipped = false;
    pthread_mutex_lock(&pool->lock);
    if (!pool->stopping && pool->queued < pool->max_queue) {
        do_enqueue(pool, task);
        pthread_cond_signal(&pool->wake);
        rc = 0;
    }
    pthread_mutex_unlock(&pool->lock);
    return rc;
}

int threadpool_size(const struct threadpool *pool)
{
    return pool->nthreads;
}

int threadpool_queued(struct threadpool *pool)
{
    pthread_mutex_lock(&pool->lock);
    int n = pool->queued;
    pthread_mutex_unlock(&pool->lock);
    return n;
}

int threadpool_busy(struct threadpool *pool)
{
    pthread_mutex_lock(&pool->lock);
    int n = pool->busy;
    pthread_mutex_unlock(&pool->lock);
    return n;
}

int threadpool_unfinished(struct threadpool *pool)
{
    /* In this order: a worker queues its task as done before it stops
     * counting it busy, and only this (loop) thread runs done() or
     * threadpool_cancel(), so a task is never missed between the two. */
    pthread_mutex_lock(&pool->lock);
    int n = pool->queued + pool->busy;
    pthread_mutex_unlock(&pool->lock);
    pthread_mutex_lock(&pool->done_lock);
    n += pool->done_length;
    pthread_mutex_unlock(&pool->done_lock);
    return n;
}

static void join_and_free(struct threadpool *pool);

/* Stop the workers and free POOL; with ONLY_IF_IDLE, -1 and nothing done
 * while a task runs. */
static int stop(struct threadpool *pool, bool only_if_idle)
{
    pthread_mutex_lock(&pool->lock);
    if (only_if_idle && pool->busy) {
        pthread_mutex_unlock(&pool->lock);
        return -1;
    }
    pool->stopping = true;      /* under the lock: no worker takes a task after this */
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    join_and_free(pool);
    return 0;
}

void threadpool_destroy(struct threadpool *pool)
{
    if (pool)
        stop(pool, false);
}

int threadpool_destroy_if_idle(struct threadpool *pool)
{
    return pool ? stop(pool, true) : 0;
}

static void join_and_free(struct threadpool *pool)
{
    for (int i = 0; i < pool->nthreads; i++)
        pthread_join(pool->threads[i], NULL);

    /* Finished tasks first, then the ones no worker reached. A done() may
     * cancel a task still waiting (a group's failing child stops its
     * siblings), which puts it on the done queue: that queue is run again
     * after each, or its done() would never run. */
    for (;;) {
        run_done(pool);
        struct pool_task *t = do_take(pool);   /* the workers are gone */
        if (!t)
            break;
        t->skipped = true;
        t->done(t);
    }
    event_free(pool->done_event);
    close(pool->efd);
    pthread_mutex_destroy(&pool->lock);
    pthread_mutex_destroy(&pool->done_lock);
    pthread_cond_destroy(&pool->wake);
    free(pool->threads);
    free(pool);
}
