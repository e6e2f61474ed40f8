/* admin.c - /healthz and /metrics on the daemon's own loop (see admin.h).
 *
 * Served on the same event_base as everything else: an answer at all proves
 * the loop turns, and nothing here blocks. Stream lag comes from XINFO
 * GROUPS, polled every few seconds on the command connection.
 *
 * Why not evhttp: every admin connection costs an fd that the Redis,
 * PostgreSQL and libcurl connections need, so their number is capped, and a
 * client that trickles a request must not hold one for long. libevent 2.1.12
 * (Debian 12) gives evhttp no way to do either: evhttp_set_max_connections
 * and evhttp_set_newreqcb are not in it (2.2); evhttp_get_request, to hand
 * evhttp a socket accepted here, is not exported; a connection that never
 * completes a request never reaches a callback, so
 * evhttp_connection_set_closecb cannot count it; and evhttp_set_timeout only
 * limits inactivity, which one byte every few seconds resets. A filter
 * bufferevent from evhttp_set_bevcb would see each connection end (its
 * free_context), but in 2.1.12 a filter strands the second request of a
 * keep-alive connection in the socket bufferevent until the timeout (tried).
 * Two GET paths need little HTTP, so this file owns the listener and the
 * connections: one request per connection, answered and closed, all within
 * DEADLINE_MS of the accept.
 */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "admin.h"
#include "admin_request.h"
#include "daemon.h"
#include "list.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"
#include "timer.h"

#define LAG_POLL_MS 5000
#define DEADLINE_MS 5000        /* accept to last byte written, however slow the client */
#define ACCEPT_RETRY_MS 500     /* accept() failing (EMFILE...): listener paused this long */
#define LOG_EVERY_MS 5000       /* refusals and accept failures: logged at most this often */

struct conn {
    struct admin *a;
    struct bufferevent *bev;    /* owns the socket */
    struct event *deadline;
    bool answered;
    bool eof;                   /* the client closed its side after its request */
    struct list_link link;      /* in a->conns */
};

struct admin {
    struct daemon *d;
    struct evconnlistener *listener;
    struct event *lag_timer;
    struct event *accept_retry;
    int64_t accept_log_at;      /* mono_us(): no accept failure message before this */
    struct list conns;          /* every open connection (struct conn), freed here */
    int nconns;
    uint64_t refused;           /* over admin.max_connections, closed at accept */
    int64_t refused_log_at;     /* mono_us(): no refusal message before this */
};

static void conn_free(struct conn *c)
{
    struct admin *a = c->a;
    list_remove(&a->conns, &c->link);
    a->nconns--;
    if (c->bev)
        bufferevent_free(c->bev);
    if (c->deadline)
        event_free(c->deadline);
    free(c);
}

/* Answered: our FIN, then the connection ends with the client's (or the
 * deadline). Closing at once could leave the client's unread bytes (a
 * refused head, pipelined requests) in our socket, and the kernel would
 * answer them with a reset that may destroy the answer before it is read. */
static void conn_written(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    if (evbuffer_get_length(bufferevent_get_output(bev)))
        return;
    if (c->eof)
        conn_free(c);
    else
        shutdown(bufferevent_getfd(bev), SHUT_WR);
}

static void conn_discard(struct bufferevent *bev, void *arg)
{
    struct evbuffer *in = bufferevent_get_input(bev);
    evbuffer_drain(in, evbuffer_get_length(in));
}

/* EOF before a whole request, after the answer, or an error: the end. Only
 * an EOF right after the request waits for the answer to be written. */
static void conn_event(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    if (c->answered && !(what & BEV_EVENT_ERROR) &&
        evbuffer_get_length(bufferevent_get_output(bev))) {
        c->eof = true;
        return;
    }
    conn_free(c);
}

static void conn_expired(evutil_socket_t fd, short what, void *arg)
{
    log_debug("admin: closed a connection still open after %d ms", DEADLINE_MS);
    conn_free(arg);
}

/* The whole answer, then close (see conn_written). */
static void reply(struct conn *c, bool head, int code, const char *reason, const char *type,
                  struct evbuffer *body)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    evbuffer_add_printf(out,
                        "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
                        "Connection: close\r\n\r\n",
                        code, reason, type, evbuffer_get_length(body),
                        code == 405 ? "Allow: GET, HEAD\r\n" : "");
    if (!head)
        evbuffer_add_buffer(out, body);
    c->answered = true;
    bufferevent_setwatermark(c->bev, EV_READ, 0, 0);
    bufferevent_setcb(c->bev, conn_discard, conn_written, conn_event, c);
    bufferevent_enable(c->bev, EV_WRITE);
}

static void error_reply(struct conn *c, bool head, int code, const char *reason,
                        struct evbuffer *body)
{
    evbuffer_add_printf(body, "{\"error\":\"%s\",\"paths\":[\"/healthz\",\"/metrics\"]}\n",
                        reason);
    reply(c, head, code, reason, "application/json", body);
}

static void healthz(struct conn *c, bool head, struct evbuffer *body)
{
    struct daemon *d = c->a->d;
    const char *problem = NULL;
    for (int r = 0; r < REDIS_NROLES && !problem; r++)
        if (!redis_ready(d->redis, (enum redis_role)r))
            problem = redis_role_name((enum redis_role)r);
    if (d->draining) {
        evbuffer_add_printf(body, "{\"status\":\"stopping\",\"reason\":\"draining for shutdown\"}\n");
        reply(c, head, 503, "Service Unavailable", "application/json", body);
    } else if (problem) {
        evbuffer_add_printf(body,
                            "{\"status\":\"unhealthy\",\"reason\":\"redis %s connection is down\"}\n",
                            problem);
        reply(c, head, 503, "Service Unavailable", "application/json", body);
    } else {
        evbuffer_add_printf(body, "{\"status\":\"ok\",\"worker\":\"%s\"}\n", d->worker_id);
        reply(c, head, 200, "OK", "application/json", body);
    }
}

/* The answer admin_route() chose. */
static void serve(struct conn *c, enum admin_route route, bool head)
{
    struct evbuffer *body = evbuffer_new();
    if (!body) {
        conn_free(c);
        return;
    }
    switch (route) {
    case ADMIN_INCOMPLETE:
        break; /* not an answer: conn_read() waits */
    case ADMIN_TOO_LARGE:
        error_reply(c, false, 431, "Request Header Fields Too Large", body);
        break;
    case ADMIN_BAD_REQUEST:
        error_reply(c, false, 400, "Bad Request", body);
        break;
    case ADMIN_NOT_ALLOWED:
        error_reply(c, false, 405, "Method Not Allowed", body);
        break;
    case ADMIN_NOT_FOUND:
        error_reply(c, head, 404, "Not Found", body);
        break;
    case ADMIN_HEALTHZ:
        healthz(c, head, body);
        break;
    case ADMIN_METRICS:
        metrics_render(c->a->d, body);
        reply(c, head, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", body);
        break;
    }
    evbuffer_free(body);
}

/* Wait for the empty line that ends the head. */
static void conn_read(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len = evbuffer_get_length(in);
    const char *p = (const char *)evbuffer_pullup(in, -1);
    bool head;
    enum admin_route route = admin_route(p, len, &head);
    if (route != ADMIN_INCOMPLETE)
        serve(c, route, head);
}

static void refuse(struct admin *a, evutil_socket_t fd)
{
    evutil_closesocket(fd);
    a->refused++;
    int64_t now = mono_us();
    if (now >= a->refused_log_at) {
        log_warn("admin: refused a connection: %d open, admin.max_connections = %d "
                 "(%llu refused in all; logged at most every %d s)",
                 a->nconns, a->d->cfg.admin_max_connections, (unsigned long long)a->refused,
                 LOG_EVERY_MS / 1000);
        a->refused_log_at = now + LOG_EVERY_MS * 1000LL;
    }
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    struct admin *a = arg;
    /* Read here, not kept: a reload applies to the next connection. */
    if (a->nconns >= a->d->cfg.admin_max_connections) {
        refuse(a, fd);
        return;
    }
    struct conn *c = calloc(1, sizeof(*c));
    if (!c) {
        evutil_closesocket(fd);
        return;
    }
    c->a = a;
    list_append(&a->conns, &c->link);
    a->nconns++;
    c->bev = bufferevent_socket_new(a->d->base, fd, BEV_OPT_CLOSE_ON_FREE);
    c->deadline = evtimer_new(a->d->base, conn_expired, c);
    if (!c->bev || !c->deadline || timer_add_ms(c->deadline, DEADLINE_MS)) {
        if (!c->bev)
            evutil_closesocket(fd);
        conn_free(c);
        return;
    }
    bufferevent_setcb(c->bev, conn_read, NULL, conn_event, c);
    /* Never buffer more than one head: past ADMIN_HEAD_MAX it is refused. */
    bufferevent_setwatermark(c->bev, EV_READ, 0, ADMIN_HEAD_MAX + 1);
    bufferevent_enable(c->bev, EV_READ);
}

/* accept() failed with something other than EAGAIN/EINTR/ECONNABORTED: out
 * of fds (EMFILE, ENFILE) or memory. The connection stays in the backlog and
 * the socket readable, so libevent would call accept again at once, forever:
 * the loop would spin at 100% CPU. Pause the listener for a while instead.
 * Logged at most every LOG_EVERY_MS: while fds are short, an accept can
 * succeed between failures, so "once per episode" could still be a flood. */
static void accept_failed(struct evconnlistener *l, void *arg)
{
    struct admin *a = arg;
    int err = EVUTIL_SOCKET_ERROR();
    evconnlistener_disable(l);
    timer_add_ms(a->accept_retry, ACCEPT_RETRY_MS);
    int64_t now = mono_us();
    if (now >= a->accept_log_at) {
        log_warn("admin: cannot accept connections: %s; trying again every %d ms "
                 "(logged at most every %d s)",
                 evutil_socket_error_to_string(err), ACCEPT_RETRY_MS, LOG_EVERY_MS / 1000);
        a->accept_log_at = now + LOG_EVERY_MS * 1000LL;
    }
}

static void accept_again(evutil_socket_t fd, short what, void *arg)
{
    struct admin *a = arg;
    evconnlistener_enable(a->listener);
}

/* STREAM's lag and pending could not be read (WHY): its series go, so the
 * last values do not pass for current ones; said when they go, not on
 * every poll. WHY NULL: the command connection is down or went, which
 * redis.c logs once for all; a line per stream would be up to 256. */
static void lag_unknown(const char *stream, const char *why)
{
    if (metrics_forget_stream(stream) && why)
        log_warn("admin: lag and pending of stream %s left out of /metrics until they can be "
                 "read again: %s",
                 stream, why);
}

/* XINFO GROUPS: one flat [name, value, ...] array per group. */
static void lag_reply(struct redis *r, redisReply *reply, void *priv)
{
    char *stream = priv;
    bool found = false;
    if (reply && reply->type == REDIS_REPLY_ARRAY) {
        for (size_t g = 0; g < reply->elements; g++) {
            const redisReply *grp = reply->element[g];
            if (grp->type != REDIS_REPLY_ARRAY)
                continue;
            const char *name = NULL;
            long long lag = -1, pending = 0;   /* -1: unknown (nil, or Redis < 7) */
            for (size_t i = 0; i + 1 < grp->elements; i += 2) {
                const redisReply *k = grp->element[i], *v = grp->element[i + 1];
                if (k->type != REDIS_REPLY_STRING)
                    continue;
                if (!strcmp(k->str, "name") && v->type == REDIS_REPLY_STRING)
                    name = v->str;
                else if (!strcmp(k->str, "lag") && v->type == REDIS_REPLY_INTEGER)
                    lag = v->integer;
                else if (!strcmp(k->str, "pending") && v->type == REDIS_REPLY_INTEGER)
                    pending = v->integer;
            }
            if (name && !strcmp(name, "jobd")) {
                metrics_set_stream(stream, lag, pending);
                found = true;
            }
        }
    }
    if (!found)
        lag_unknown(stream, !reply                             ? NULL
                            : reply->type == REDIS_REPLY_ERROR ? reply->str
                            : reply->type == REDIS_REPLY_ARRAY
                                ? "it has no group jobd"
                                : "unexpected reply to XINFO GROUPS");
    free(stream);
}

static void lag_poll(evutil_socket_t fd, short what, void *arg)
{
    struct admin *a = arg;
    for (int s = 0; s < a->d->cfg.nstreams; s++) {
        const char *name = a->d->cfg.streams[s];
        char *stream = strdup(name);
        const char *argv[] = {"XINFO", "GROUPS", stream};
        if (!stream || redis_send(a->d->redis, REDIS_CMD, lag_reply, stream, 0, 3, argv, NULL)) {
            free(stream);
            lag_unknown(name, NULL);
        }
    }
}

struct admin *admin_create(struct daemon *d, int *off)
{
    const char *listen = d->cfg.admin_listen;
    *off = !listen || !*listen;
    if (*off)
        return NULL;
    char host[64];
    const char *colon = strrchr(listen, ':');
    size_t hl = (size_t)(colon - listen);
    /* config.c checked the form "IP:port" or "[IPv6]:port". */
    if (listen[0] == '[') {
        snprintf(host, sizeof(host), "%.*s", (int)(hl - 2), listen + 1);
    } else {
        snprintf(host, sizeof(host), "%.*s", (int)hl, listen);
    }
    struct admin *a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    a->d = d;
    /* Numeric host and port: no DNS. */
    struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE,
                             .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    if (!getaddrinfo(host, colon + 1, &hints, &ai))
        a->listener = evconnlistener_new_bind(
            d->base, on_accept, a, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_REUSEABLE,
            -1, ai->ai_addr, (int)ai->ai_addrlen);
    if (ai)
        freeaddrinfo(ai);
    a->accept_retry = evtimer_new(d->base, accept_again, a);
    if (!a->listener || !a->accept_retry) {
        log_error("admin: cannot listen on %s", listen);
        admin_free(a);
        return NULL;
    }
    evconnlistener_set_error_cb(a->listener, accept_failed);
    a->lag_timer = timer_new_periodic(d->base, LAG_POLL_MS, lag_poll, a);
    log_info("admin: /healthz and /metrics on http://%s", listen);
    return a;
}

void admin_counts(const struct admin *a, int *open, uint64_t *refused)
{
    *open = a ? a->nconns : 0;
    *refused = a ? a->refused : 0;
}

void admin_free(struct admin *a)
{
    if (!a)
        return;
    while (a->conns.head)
        conn_free(list_entry(a->conns.head, struct conn, link));
    if (a->listener)
        evconnlistener_free(a->listener);
    if (a->accept_retry)
        event_free(a->accept_retry);
    if (a->lag_timer)
        event_free(a->lag_timer);
    free(a);
}
