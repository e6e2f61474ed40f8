/* admin.c - /healthz and /metrics on the daemon's own loop (see admin.h).
 *
 * Served by evhttp on the same event_base as everything else: an answer at
 * all proves the loop turns, and nothing here blocks. Stream lag comes from
 * XINFO GROUPS, polled every few seconds on the command connection.
 */
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "daemon.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"
#include "timer.h"

#define LAG_POLL_MS 5000

struct admin {
    struct daemon *d;
    struct evhttp *http;
    struct event *lag_timer;
};

static void reply(struct evhttp_request *req, int code, const char *reason, const char *type,
                  struct evbuffer *body)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", type);
    evhttp_send_reply(req, code, reason, body);
}

static void healthz(struct evhttp_request *req, void *arg)
{
    struct admin *a = arg;
    struct daemon *d = a->d;
    struct evbuffer *body = evbuffer_new();
    const char *problem = NULL;
    for (int r = 0; r < REDIS_NROLES && !problem; r++)
        if (!redis_ready(d->redis, (enum redis_role)r))
            problem = redis_role_name((enum redis_role)r);
    if (d->draining) {
        evbuffer_add_printf(body, "{\"status\":\"stopping\",\"reason\":\"draining for shutdown\"}\n");
        reply(req, 503, "Service Unavailable", "application/json", body);
    } else if (problem) {
        evbuffer_add_printf(body,
                            "{\"status\":\"unhealthy\",\"reason\":\"redis %s connection is down\"}\n",
                            problem);
        reply(req, 503, "Service Unavailable", "application/json", body);
    } else {
        evbuffer_add_printf(body, "{\"status\":\"ok\",\"worker\":\"%s\"}\n", d->worker_id);
        reply(req, 200, "OK", "application/json", body);
    }
    evbuffer_free(body);
}

static void metrics(struct evhttp_request *req, void *arg)
{
    struct admin *a = arg;
    struct evbuffer *body = evbuffer_new();
    metrics_render(a->d, body);
    reply(req, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", body);
    evbuffer_free(body);
}

static void not_found(struct evhttp_request *req, void *arg)
{
    struct evbuffer *body = evbuffer_new();
    evbuffer_add_printf(body, "{\"error\":\"not found\",\"paths\":[\"/healthz\",\"/metrics\"]}\n");
    reply(req, 404, "Not Found", "application/json", body);
    evbuffer_free(body);
}

/* XINFO GROUPS: one flat [name, value, ...] array per group. */
static void lag_reply(struct redis *r, redisReply *reply, void *priv)
{
    char *stream = priv;
    if (reply && reply->type == REDIS_REPLY_ARRAY) {
        for (size_t g = 0; g < reply->elements; g++) {
            const redisReply *grp = reply->element[g];
            if (grp->type != REDIS_REPLY_ARRAY)
                continue;
            const char *name = NULL;
            long long lag = -1, pending = 0;
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
            if (name && !strcmp(name, "jobd"))
                metrics_set_stream(stream, lag, pending);
        }
    }
    free(stream);
}

static void lag_poll(evutil_socket_t fd, short what, void *arg)
{
    struct admin *a = arg;
    for (int s = 0; s < a->d->cfg.nstreams; s++) {
        char *stream = strdup(a->d->cfg.streams[s]);
        const char *argv[] = {"XINFO", "GROUPS", stream};
        if (!stream || redis_send(a->d->redis, REDIS_CMD, lag_reply, stream, 0, 3, argv, NULL))
            free(stream);
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
    int port = atoi(colon + 1);
    struct admin *a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    a->d = d;
    a->http = evhttp_new(d->base);
    if (!a->http || evhttp_bind_socket(a->http, host, (ev_uint16_t)port)) {
        log_error("admin: cannot listen on %s", listen);
        admin_free(a);
        return NULL;
    }
    evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
    evhttp_set_timeout(a->http, 10);
    evhttp_set_max_headers_size(a->http, 8192);
    evhttp_set_max_body_size(a->http, 0);
    evhttp_set_cb(a->http, "/healthz", healthz, a);
    evhttp_set_cb(a->http, "/metrics", metrics, a);
    evhttp_set_gencb(a->http, not_found, a);
    a->lag_timer = timer_new_periodic(d->base, LAG_POLL_MS, lag_poll, a);
    log_info("admin: /healthz and /metrics on http://%s", listen);
    return a;
}

void admin_free(struct admin *a)
{
    if (!a)
        return;
    if (a->lag_timer)
        event_free(a->lag_timer);
    if (a->http)
        evhttp_free(a->http);
    free(a);
}
