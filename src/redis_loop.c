/* redis_loop.c - hiredis async contexts on the libevent loop (see redis_loop.h).
 *
 * No flags of our own for what is armed: event_add() of a pending event,
 * event_del() of one that is not, and event_active() of an active one change
 * nothing and make no system call. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "redis_loop.h"
#include "resp_filter.h"

/* Runs the callbacks of the replies the reader holds; on a reader error it
 * drops the connection. Exported by libhiredis 0.14.1 (the second half of
 * redisAsyncHandleRead()) but not declared in its async.h (later versions
 * declare it in async_private.h). */
void redisProcessCallbacks(redisAsyncContext *ac);

/* What one read event takes from a filtered socket: big enough that an
 * entry being dropped goes by in few loop passes. */
#define READ_CHUNK (64 * 1024)

struct loop_events {
    redisAsyncContext *ac;
    const int64_t *max_job_bytes; /* NULL: hiredis reads the socket itself */
    struct resp_filter filter;
    uint64_t reads;             /* read events handled (redis_loop_reads()) */
    struct event *rev;          /* persistent while hiredis wants reads */
    struct event *wev;          /* only while a write is waiting for room */
    struct event *flush;        /* activated: write when this loop pass ends */
    bool in_flush;              /* inside on_flush's redisAsyncHandleWrite */
    bool released;              /* cleanup ran inside it: on_flush frees */
};

static void feed_reader(void *arg, const char *p, size_t n)
{
    /* A failure (out of memory) is kept in the reader, and
     * redisProcessCallbacks() then drops the connection. */
    redisReaderFeed(arg, p, n);
}

/* The filter stopped the stream (resp_filter.h): the reader is failed as
 * hiredis fails it on a protocol error, so redisProcessCallbacks() drops
 * the connection with WHY as its error (logged, and reconnected). Replies
 * complete before that point in the same read are lost with it, as with
 * any connection lost. */
static void fail_reader(redisReader *r, const char *why)
{
    if (r->err)
        return;
    r->err = REDIS_ERR_PROTOCOL;
    snprintf(r->errstr, sizeof(r->errstr), "%s", why);
}

/* A filtered connection's socket is read here, through the filter, and
 * hiredis is handed what is left (redis_loop.h). The end of the stream or
 * an error is left to redisAsyncHandleRead(): it reads it again itself and
 * runs its own disconnect, which is private to hiredis. So is the end of a
 * connect, which hiredis learns through a read before it is connected. */
static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    struct loop_events *e = arg;
    redisAsyncContext *ac = e->ac;
    e->reads++;
    if (!e->max_job_bytes || !(ac->c.flags & REDIS_CONNECTED) || ac->c.err) {
        redisAsyncHandleRead(ac);   /* may free the context, and E with it */
        return;
    }
    char buf[READ_CHUNK];
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n > 0) {
        uint64_t max = (uint64_t)*e->max_job_bytes + REDIS_LOOP_BULK_SLACK;
        resp_filter_feed(&e->filter, buf, (size_t)n, max, feed_reader, ac->c.reader);
        if (e->filter.error)
            fail_reader(ac->c.reader, e->filter.error);
        redisProcessCallbacks(ac);  /* may free the context, and E with it */
    } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        redisAsyncHandleRead(ac);
    }
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    struct loop_events *e = arg;
    redisAsyncHandleWrite(e->ac);
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    struct loop_events *e = arg;
    e->in_flush = true;
    redisAsyncHandleWrite(e->ac);
    if (e->released) {          /* the write failed and hiredis let go of E */
        free(e);
        return;
    }
    e->in_flush = false;
}

static void add_read(void *priv)
{
    event_add(((struct loop_events *)priv)->rev, NULL);
}

static void del_read(void *priv)
{
    event_del(((struct loop_events *)priv)->rev);
}

static void add_write(void *priv)
{
    struct loop_events *e = priv;
    /* Until connected, writability is how hiredis learns the connect ended;
     * and a write that left bytes behind must wait for room. */
    if ((e->ac->c.flags & REDIS_CONNECTED) && !e->in_flush &&
        !event_pending(e->wev, EV_WRITE, NULL))
        event_active(e->flush, EV_WRITE, 0);
    else
        event_add(e->wev, NULL);
}

static void del_write(void *priv)
{
    event_del(((struct loop_events *)priv)->wev);
}

static void free_events(struct loop_events *e)
{
    if (e->rev)
        event_free(e->rev);
    if (e->wev)
        event_free(e->wev);
    if (e->flush)
        event_free(e->flush);
}

static void cleanup(void *priv)
{
    struct loop_events *e = priv;
    free_events(e);
    if (e->in_flush)
        e->released = true;
    else
        free(e);
}

int redis_loop_attach(redisAsyncContext *ac, struct event_base *base, const int64_t *max_job_bytes,
                      unsigned fields_depth)
{
    if (ac->ev.data)
        return -1;
    struct loop_events *e = calloc(1, sizeof(*e));
    if (!e)
        return -1;
    e->ac = ac;
    e->max_job_bytes = max_job_bytes;
    resp_filter_init(&e->filter);
    if (fields_depth)
        resp_filter_cap(&e->filter, fields_depth, 2 * REDIS_LOOP_MAX_ENTRY_FIELDS);
    int fd = ac->c.fd;
    e->rev = event_new(base, fd, EV_READ | EV_PERSIST, on_readable, e);
    e->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, on_writable, e);
    e->flush = event_new(base, -1, 0, on_flush, e);
    if (!e->rev || !e->wev || !e->flush) {
        free_events(e);
        free(e);
        return -1;
    }
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    ac->ev.data = e;
    /* As hiredis's own adapter: reading from the start, and writable is
     * how the non-blocking connect reports its end. */
    add_read(e);
    add_write(e);
    return 0;
}

uint64_t redis_loop_reads(const redisAsyncContext *ac)
{
    const struct loop_events *e = ac->ev.data;
    return e ? e->reads : 0;
}
