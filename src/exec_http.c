/* exec_http.c - the "http" type: libcurl's multi_socket API on the daemon's
 * libevent loop (curl's hiperfifo.c pattern, 7.88 semantics).
 *
 * One multi handle for every job, so connections and TLS sessions are reused
 * across jobs; no thread per request and no blocking call on the loop. A job
 * is one request or a batch run at most `concurrency` at a time. Safety per
 * transfer: http and https only (redirects too), redirects only on request
 * and at most 5, and unless http.allow_private, the address actually connected
 * to is checked in the open-socket callback, so DNS tricks and numeric forms
 * of loopback or private addresses do not get through.
 */
#include <curl/curl.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "addr_policy.h"
#include "daemon.h"
#include "encode.h"
#include "exec_http.h"
#include "executor.h"
#include "http_lookups.h"
#include "http_response.h"
#include "log.h"
#include "result.h"
#include "runner.h"
#include "timer.h"

#define MAX_URL 8192
/* Requests in one batch job. Each costs ~0.7 KB of state here (most of it the
 * error message), and its parsed URL ~0.3 KB more for a short one; the
 * default limits.max_job_bytes fits ~50,000 short URLs: 20,000 (14 MB, 19
 * with the parsed URLs) is the largest batch bench/http runs. */
#define MAX_BATCH 20000
#define MAX_REDIRECTS 5
#define MAX_CONCURRENCY 1000
/* What one request holds once parsed, charged to limits.max_held_bytes
 * beside the envelope: its struct, its URL parsed (a CURLU and its parts,
 * ~250 bytes) and the URL's string in the envelope's tree (~80). A batch
 * URL is ~30 bytes of envelope and ~600 bytes parsed (measured: 12.2 MB for
 * 20,000, 12.1 MB charged). Charged the envelope only, when each request
 * also held its error inline, 200 batches of 20,000 URLs (126 MB charged)
 * took 4.5 GB. */
#define REQUEST_PARSED_COST ((int64_t)sizeof(struct http_request) + 330)

struct http_request {
    struct http_job *hj;
    int index;
    CURL *easy;
    char *errbuf;               /* CURL_ERROR_SIZE, only while the transfer exists:
                                 * a batch of MAX_BATCH items stays small */
    /* What to send. url, method and body point into the job's envelope
     * (job->spec, freed by the runner only after http_free), so the job-level
     * body a batch falls back to is shared, never copied per request. */
    const char *url, *method, *body;
    /* url as check_url() parsed it (owned), handed to libcurl as it is
     * (CURLOPT_CURLU) so that no attempt parses it again: libcurl only reads
     * it, copying it for each transfer, and follows redirects in its copy. */
    CURLU *uh;
    char *shown_url;            /* url without its password, for messages; NULL: url */
    size_t body_len;
    struct curl_slist *headers;         /* sent: own_headers or the job's list */
    struct curl_slist *own_headers;     /* the item's own "headers" (owned), else NULL */
    bool raise_for_status, follow_redirects;
    struct http_response resp; /* what came back: mode, max_bytes, body */
    bool running;
    /* Addresses the policy refused, and sockets opened, in the current hop:
     * "forbidden" only when every address was refused (request_outcome()). */
    int refused_addresses, opened_sockets;
    /* Redirects followed, for refuse_downgrade(): whether the current hop
     * is https, and then its URL (owned; NULL out of memory); whether a
     * downgrade was refused (rq->err says so). */
    bool hop_https, downgraded;
    char *hop_url;
    /* A hop's name lookup was refused by the caps on abandoned lookups
     * (resolver_start(): a redirect's target); rq->err says so. */
    bool lookup_refused;
    /* The host whose name the transfer is looking up (owned), counted in
     * http.lookups from the resolver's socket appearing to its removal;
     * NULL between lookups. Stopped then, the transfer is parked. */
    char *lookup_host;
    json_t *outcome;            /* result object, or {"error": {...}} in a batch */
    /* Why it failed (owned), made when it does (request_error()): a batch's
     * requests that do not fail keep none, half of what each one holds. */
    struct job_error *err;
    bool failed;
};

struct http_job {
    struct job *job;
    bool batch;
    int n, next, running, finished, concurrency;
    struct http_request *reqs;
    struct curl_slist *headers; /* the job-level "headers", built once for all requests */
    struct http_budget budget;  /* text and json bodies kept, for all its requests */
    bool queued;                /* in the wait queue for a transfer slot */
    struct http_job *qprev, *qnext;
};

/* Module state: one multi handle on the daemon's loop. */
static struct {
    struct daemon *d;
    CURLM *multi;
    CURLSH *share;
    struct event *timer;
    int sockets;                /* connections libcurl has us watching */
    int transfers;              /* transfers in the multi handle */
    /* Jobs with requests to start, in turn: libcurl gets at most
     * http.max_connections transfers at once (see start_waiting). */
    struct http_job *wait_head, *wait_tail;
    int waiting;
    struct event *kick;         /* start_waiting() once this loop pass ends */
    struct sock_watch **watches;    /* indexed by fd */
    int nwatches;
    /* Lookups going, by host, and the transfers stopped during theirs,
     * parked in the multi handle until it ends (see park()). */
    struct lookups lookups;
    struct parked *parked;
    int nparked;
} http;

/* A transfer stopped during its name lookup. Removed from the multi handle,
 * it would leave the resolver's thread running unseen (CURLOPT_QUICK_EXIT);
 * kept there, detached from its job, its end is seen: the lookup fails
 * (CURLMSG_DONE) or succeeds and the connection is refused (no OPENSOCKETDATA:
 * open_socket() says no), and only then is the handle removed. */
struct parked {
    CURL *easy;
    char *host;
    struct parked *next;
};

static void start_transfers(struct http_job *hj);
static void wait_remove(struct http_job *hj);

/* One per socket fd libcurl has used. libcurl says REMOVE when a transfer
 * ends and IN again when the next one reuses the cached connection; deleting
 * and re-adding the epoll registration cost two syscalls per request. So a
 * removed socket stays registered (unwanted) until its interest changes, it
 * fires (then it is deleted), or libcurl closes it (closesocket callback). */
struct sock_watch {
    struct event ev;
    short kind;                 /* EV_READ/EV_WRITE as registered */
    bool live;                  /* registered with the loop */
    bool wanted;                /* libcurl watches it */
    /* Opened through open_socket(), so closed through close_socket(). The
     * threaded resolver's own socket pair is not: libcurl says REMOVE and
     * then close()s it directly, so its registration must go at REMOVE, or
     * the next fd given that number (an admin client, the next lookup's
     * pair) would inherit a registration epoll no longer has. */
    bool ours;
};

/* Finished easy handles kept for reuse (curl_easy_reset): creating one per
 * request costs more than the request itself on a fast local server. */
#define SPARE_HANDLES 256
static CURL *spare[SPARE_HANDLES];
static int nspare;

static CURL *easy_get(void)
{
    return nspare ? spare[--nspare] : curl_easy_init();
}

static void easy_put(CURL *e)
{
    if (nspare < SPARE_HANDLES) {
        /* The reset also drops the URL text libcurl kept from the last
         * transfer. Kept, a handle given its next URL as a CURLU reports the
         * last one's as CURLINFO_EFFECTIVE_URL (curl/curl#15984, fixed in
         * 8.12), which refuse_downgrade() and lookup_begin() read. */
        curl_easy_reset(e);
        spare[nspare++] = e;
    } else {
        curl_easy_cleanup(e);
    }
}

static int close_socket(void *clientp, curl_socket_t s);

static struct sock_watch *watch_of(curl_socket_t s, bool create);

#define SHOWN_URL(rq) ((rq)->shown_url ? (rq)->shown_url : (rq)->url)

static curl_socket_t open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *addr)
{
    struct http_request *rq = clientp;
    if (!rq)
        return CURL_SOCKET_BAD;     /* parked: its job is gone */
    if (!http.d->cfg.http_allow_private && addr_is_private(&addr->addr)) {
        rq->refused_addresses++;
        return CURL_SOCKET_BAD;
    }
    curl_socket_t s = socket(addr->family, addr->socktype, addr->protocol);
    struct sock_watch *w = watch_of(s, true);
    if (s != CURL_SOCKET_BAD && !w) {
        close(s);       /* out of memory: it could not be watched */
        return CURL_SOCKET_BAD;
    }
    if (w) {
        w->ours = true;
        rq->opened_sockets++;
    }
    return s;
}

static char *shown_text(const char *url);

/* RQ's error, to be set: made when it first fails. Out of memory, a
 * scratch one takes what is set, and request_failure() says so instead. */
static struct job_error *request_error(struct http_request *rq)
{
    static struct job_error scratch;
    if (!rq->err)
        rq->err = calloc(1, sizeof(*rq->err));
    return rq->err ? rq->err : &scratch;
}

/* Why RQ failed, as request_error() kept it. */
static const struct job_error *request_failure(const struct http_request *rq)
{
    static const struct job_error no_memory = {
        .code = ERR_INTERNAL, .message = "out of memory keeping a request's error"};
    return rq->err ? rq->err : &no_memory;
}

/* A redirect from https to http would send the job's headers (API keys,
 * tokens) and the request in clear text, and let anyone on the path answer
 * for the https server: the hop is refused before its request goes out.
 * CURLOPT_REDIR_PROTOCOLS_STR cannot say "https only after https", so each
 * hop's scheme (CURLINFO_SCHEME, the connection's) is compared with the
 * last one's. True when refused; rq->err then says so. */
static bool refuse_downgrade(struct http_request *rq)
{
    char *url = NULL, *scheme = NULL;
    curl_easy_getinfo(rq->easy, CURLINFO_EFFECTIVE_URL, &url);
    curl_easy_getinfo(rq->easy, CURLINFO_SCHEME, &scheme);
    bool https = scheme && !strcasecmp(scheme, "https");
    if (rq->hop_https && !https) {
        char *from = rq->hop_url ? shown_text(rq->hop_url) : NULL;
        char *to = url ? shown_text(url) : NULL;
        /* Both URLs fit in the message, however long the first one is. */
        job_error_set(request_error(rq), ERR_FORBIDDEN,
                      "%.200s: redirect to %.200s refused: https to http would send the request "
                      "and its headers in clear text",
                      from ? from : "(an https URL)", to ? to : "(an http URL)");
        free(from);
        free(to);
        rq->downgraded = true;
        return true;
    }
    free(rq->hop_url);
    rq->hop_url = https && url ? strdup(url) : NULL;
    rq->hop_https = https;
    return false;
}

/* CURLOPT_PREREQFUNCTION: before each request, on a new connection or one
 * reused from the cache. A cached connection was judged when it was opened,
 * perhaps under an http.allow_private that a reload has turned off since:
 * judged again here. Also where a hop's counts start over, so that a refusal
 * on an earlier hop of a redirect does not make a later failure "forbidden",
 * and where a redirect from https to http is refused, allow_private or not. */
static int before_request(void *clientp, char *primary_ip, char *local_ip, int primary_port,
                          int local_port)
{
    struct http_request *rq = clientp;
    if (!rq)
        return CURL_PREREQFUNC_ABORT;
    rq->opened_sockets = rq->refused_addresses = 0;
    if (rq->follow_redirects && refuse_downgrade(rq))
        return CURL_PREREQFUNC_ABORT;
    if (http.d->cfg.http_allow_private)
        return CURL_PREREQFUNC_OK;
    if (!addr_text_is_private(primary_ip))
        return CURL_PREREQFUNC_OK;
    rq->refused_addresses = 1;
    return CURL_PREREQFUNC_ABORT;
}

/* ---- parsing ----------------------------------------------------------------- */

static const char *const request_fields[] = {"url", "method", "headers", "body", "response",
                                             "max_bytes", "raise_for_status",
                                             "follow_redirects", NULL};

static bool is_token(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!strchr("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                    "ABCDEFGHIJKLMNOPQRSTUVWXYZ", *s))
            return false;
    return true;
}

/* The URL as messages show it, its password replaced by "***": they go to
 * the result record, the log and dead letters. NULL when it has none. The
 * password is masked in a copy: U itself is what libcurl sends. */
static char *shown_url(CURLU *u)
{
    char *password = NULL, *text = NULL, *shown = NULL;
    CURLU *masked = NULL;
    if (curl_url_get(u, CURLUPART_PASSWORD, &password, 0) == CURLUE_OK &&
        (masked = curl_url_dup(u)) &&
        curl_url_set(masked, CURLUPART_PASSWORD, "***", 0) == CURLUE_OK &&
        curl_url_get(masked, CURLUPART_URL, &text, 0) == CURLUE_OK)
        shown = strdup(text);
    else if (password)
        shown = strdup("(a URL with a password)");  /* never the URL itself */
    curl_free(password);
    curl_free(text);
    curl_url_cleanup(masked);
    return shown;
}

/* URL as messages show it, its password as "***" (malloc'd); NULL when
 * libcurl cannot read it (or out of memory): a password is never shown. */
static char *shown_text(const char *url)
{
    CURLU *u = curl_url();
    char *shown = NULL, *password = NULL;
    if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK) {
        if (curl_url_get(u, CURLUPART_PASSWORD, &password, 0) == CURLUE_OK)
            shown = shown_url(u);
        else
            shown = strdup(url);        /* it has no password */
    }
    curl_free(password);
    curl_url_cleanup(u);
    return shown;
}

/* Checks URL; *PARSED: the handle it was parsed into (the caller's to free),
 * *SHOWN: shown_url(), or NULL. */
static int check_url(const char *where, const char *url, CURLU **parsed, char **shown,
                     struct job_error *err)
{
    if (strlen(url) > MAX_URL) {
        job_error_set(err, ERR_INVALID_JOB, "%s: longer than %d bytes", where, MAX_URL);
        return -1;
    }
    CURLU *u = curl_url();
    char *scheme = NULL;
    int rc = -1;
    if (!u || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK)
        job_error_set(err, ERR_INVALID_JOB, "%s: not a valid URL", where);
    else if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
             (strcasecmp(scheme, "http") && strcasecmp(scheme, "https")))
        job_error_set(err, ERR_INVALID_JOB, "%s: only http and https URLs are allowed", where);
    else
        rc = 0;
    if (rc == 0) {
        *shown = shown_url(u);
        *parsed = u;
    } else {
        curl_url_cleanup(u);
    }
    curl_free(scheme);
    return rc;
}

/* A field of the request object, else of the job (batch defaults). */
static json_t *field_of(const json_t *req, const json_t *defaults, const char *name)
{
    json_t *v = req ? json_object_get(req, name) : NULL;
    return v ? v : json_object_get(defaults, name);
}

/* Headers that decide where a message ends or what becomes of the
 * connection. Connections are shared by every job: a Content-Length of 0
 * before a body would make the body a second request on the kept-alive
 * connection, whose answer the next job to reuse it would read as its own. */
static bool framing_header(const char *name)
{
    static const char *const framing[] = {"Content-Length", "Transfer-Encoding", "Connection",
                                          "Keep-Alive", "Upgrade", "TE", "Trailer",
                                          "Proxy-Connection", NULL};
    for (const char *const *f = framing; *f; f++)
        if (!strcasecmp(name, *f))
            return true;
    return false;
}

/* "headers" {name: value} as the curl_slist OUT (NULL for {}). */
static int parse_headers(const json_t *v, const char *where, struct curl_slist **out,
                         struct job_error *err)
{
    if (!json_is_object(v)) {
        job_error_set(err, ERR_INVALID_JOB, "%s: must be an object", where);
        return -1;
    }
    const char *name;
    json_t *value;
    json_object_foreach((json_t *)v, name, value) {
        const char *text = json_string_value(value);
        if (!is_token(name) || !text || strpbrk(text, "\r\n") ||
            strlen(text) != json_string_length(value)) {
            job_error_set(err, ERR_INVALID_JOB,
                          "%s: \"%.64s\" must be a token with a string value "
                          "without CR, LF or NUL",
                          where, name);
            return -1;
        }
        if (framing_header(name)) {
            job_error_set(err, ERR_INVALID_JOB,
                          "%s: \"%.64s\" is not allowed: it frames the message or manages the "
                          "connection, which libcurl does",
                          where, name);
            return -1;
        }
        char line[8192];
        if ((size_t)snprintf(line, sizeof(line), "%s: %s", name, text) >= sizeof(line)) {
            job_error_set(err, ERR_INVALID_JOB, "%s: \"%.64s\" is too long", where, name);
            return -1;
        }
        /* "Name:" alone would make curl drop the header: send "Name;" for empty. */
        if (!*text)
            snprintf(line, sizeof(line), "%s;", name);
        struct curl_slist *grown = curl_slist_append(*out, line);
        if (!grown) {
            job_error_set(err, ERR_INTERNAL, "out of memory");
            return -1;
        }
        *out = grown;
    }
    return 0;
}

static int parse_request(struct http_job *hj, struct http_request *rq, const json_t *req,
                         const json_t *url, const json_t *defaults, const char *where,
                         struct job_error *err)
{
    const struct config *cfg = &hj->job->d->cfg;
    char label[64];
    if (!json_is_string(url) || !json_string_length(url)) {
        job_error_set(err, ERR_INVALID_JOB, "%s.url: required, a string", where);
        return -1;
    }
    snprintf(label, sizeof(label), "%s.url", where);
    if (check_url(label, json_string_value(url), &rq->uh, &rq->shown_url, err))
        return -1;
    rq->url = json_string_value(url);

    json_t *v = field_of(req, defaults, "method");
    const char *method = v ? json_string_value(v) : "GET";
    static const char *const methods[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE",
                                          "OPTIONS", NULL};
    bool known = false;
    for (const char *const *m = methods; method && *m; m++)
        known |= !strcmp(*m, method);
    if (!known) {
        job_error_set(err, ERR_INVALID_JOB,
                      "%s.method: must be GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS", where);
        return -1;
    }
    rq->method = method;

    /* An item's own headers replace the job's; the job's list is shared. */
    rq->headers = hj->headers;
    if (req && (v = json_object_get(req, "headers"))) {
        snprintf(label, sizeof(label), "%s.headers", where);
        if (parse_headers(v, label, &rq->own_headers, err))
            return -1;
        rq->headers = rq->own_headers;
    }
    if ((v = field_of(req, defaults, "body"))) {
        if (!json_is_string(v)) {
            job_error_set(err, ERR_INVALID_JOB, "%s.body: must be a string", where);
            return -1;
        }
        rq->body = json_string_value(v);
        rq->body_len = json_string_length(v);
    }
    rq->resp.mode = RESP_TEXT;
    if ((v = field_of(req, defaults, "response"))) {
        const char *m = json_string_value(v);
        if (m && !strcmp(m, "text"))
            rq->resp.mode = RESP_TEXT;
        else if (m && !strcmp(m, "json"))
            rq->resp.mode = RESP_JSON;
        else if (m && !strcmp(m, "sha256"))
            rq->resp.mode = RESP_SHA256;
        else if (m && !strcmp(m, "discard"))
            rq->resp.mode = RESP_DISCARD;
        else {
            job_error_set(err, ERR_INVALID_JOB,
                          "%s.response: must be text, json, sha256 or discard", where);
            return -1;
        }
    }
    /* Bodies kept in memory are capped by http.max_bytes; streamed ones
     * (sha256, discard) only when the job asks. */
    bool kept = rq->resp.mode == RESP_TEXT || rq->resp.mode == RESP_JSON;
    rq->resp.max_bytes = kept ? cfg->http_max_bytes : 0;
    if ((v = field_of(req, defaults, "max_bytes"))) {
        int64_t cap = kept ? cfg->http_max_bytes : INT64_MAX;
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > cap) {
            job_error_set(err, ERR_INVALID_JOB, "%s.max_bytes: must be an integer 1..%lld",
                          where, (long long)cap);
            return -1;
        }
        rq->resp.max_bytes = json_integer_value(v);
    }
    rq->raise_for_status = true;
    if ((v = field_of(req, defaults, "raise_for_status"))) {
        if (!json_is_boolean(v)) {
            job_error_set(err, ERR_INVALID_JOB, "%s.raise_for_status: must be true or false",
                          where);
            return -1;
        }
        rq->raise_for_status = json_is_true(v);
    }
    if ((v = field_of(req, defaults, "follow_redirects"))) {
        if (!json_is_boolean(v)) {
            job_error_set(err, ERR_INVALID_JOB, "%s.follow_redirects: must be true or false",
                          where);
            return -1;
        }
        rq->follow_redirects = json_is_true(v);
    }
    return 0;
}

/* ---- name lookups ----------------------------------------------------------- */

/* The host part of URL (malloc'd), or NULL. */
static char *host_of(const char *url)
{
    CURLU *u = curl_url();
    char *host = NULL, *copy = NULL;
    if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK)
        copy = strdup(host);
    curl_free(host);
    curl_url_cleanup(u);
    return copy;
}

/* The resolver's socket of RQ's transfer appeared: a lookup began (of the
 * current hop's host: a redirect's target is looked up in its own turn). */
static void lookup_begin(struct http_request *rq)
{
    char *url = NULL;
    curl_easy_getinfo(rq->easy, CURLINFO_EFFECTIVE_URL, &url);
    char *host = url ? host_of(url) : NULL;
    if (host && lookups_begin(&http.lookups, host) == 0)
        rq->lookup_host = host;
    else
        free(host);     /* out of memory: not counted, and not parked */
}

static void lookup_end(struct http_request *rq)
{
    if (!rq->lookup_host)
        return;
    lookups_end(&http.lookups, rq->lookup_host, false);
    free(rq->lookup_host);
    rq->lookup_host = NULL;
}

/* Parked transfers hold a connection of libcurl's until their lookup ends:
 * not one of the http.max_connections that jobs share. */
static void set_connection_limit(void)
{
    curl_multi_setopt(http.multi, CURLMOPT_MAX_TOTAL_CONNECTIONS,
                      (long)http.d->cfg.http_max_connections + http.nparked);
}

/* RQ's transfer is stopped while its name is looked up: leave it in the
 * multi handle, its job's pointers taken away, until the lookup ends
 * (unpark()). False when it is not looking a name up (or out of memory): then
 * the caller removes it. */
static bool park(struct http_request *rq)
{
    struct parked *p = rq->lookup_host ? malloc(sizeof(*p)) : NULL;
    if (!p)
        return false;
    CURL *e = rq->easy;
    p->easy = e;
    p->host = rq->lookup_host;
    rq->lookup_host = NULL;
    rq->easy = NULL;
    lookups_abandon(&http.lookups, p->host);
    p->next = http.parked;
    http.parked = p;
    http.nparked++;
    curl_easy_setopt(e, CURLOPT_PRIVATE, NULL);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, NULL);     /* rq->errbuf goes with rq */
    /* rq->uh too. libcurl read it when the transfer started and has the URL
     * as text since; it is not left pointing at freed memory regardless. */
    curl_easy_setopt(e, CURLOPT_CURLU, NULL);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, NULL);
    curl_easy_setopt(e, CURLOPT_PREREQDATA, NULL);
    curl_easy_setopt(e, CURLOPT_RESOLVER_START_DATA, NULL);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, NULL);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, NULL);
    /* libcurl reads its timeouts as it checks them: left as they were, the
     * job's timeout + 1 s would stop the transfer, and leave the thread
     * unseen after all. getaddrinfo() gives up on its own (resolv.conf). */
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 0L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 86400000L);
    set_connection_limit();
    return true;
}

/* A parked transfer E ended: its lookup did. */
static void unpark(CURL *e)
{
    for (struct parked **pp = &http.parked; *pp; pp = &(*pp)->next) {
        struct parked *p = *pp;
        if (p->easy != e)
            continue;
        *pp = p->next;
        curl_multi_remove_handle(http.multi, e);
        easy_put(e);
        lookups_end(&http.lookups, p->host, true);
        free(p->host);
        free(p);
        http.nparked--;
        set_connection_limit();
        return;
    }
}

/* Whether a transfer to URL may start, or a redirect's hop to URL may look
 * its host up: not while lookups of its host, or too many of all hosts',
 * were abandoned and are still running (http_lookups.c). */
static bool lookup_admitted(const char *url, char *why, size_t size)
{
    if (!http.lookups.abandoned)
        return true;
    char *host = host_of(url);
    bool ok = !host || !lookups_needed(host) ||
              lookups_admit(&http.lookups, host, http.d->cfg.http_max_abandoned_lookups, why,
                            size);
    free(host);
    return ok;
}

/* RQ's hop to URL may not look its host up: the attempt fails http_error,
 * retried after the job's delay, rather than waiting for a name server that
 * may never answer. SHOWN: URL as messages show it, or NULL to make it here.
 * False when admitted. */
static bool refuse_lookup(struct http_request *rq, const char *url, const char *shown)
{
    char why[400];
    if (lookup_admitted(url, why, sizeof(why)))
        return false;
    char *made = shown ? NULL : shown_text(url);
    job_error_set(request_error(rq), ERR_HTTP_ERROR, "%s: its host is not looked up: %s",
                  shown ? shown : made ? made : SHOWN_URL(rq), why);
    free(made);
    return true;
}

/* CURLOPT_RESOLVER_START_FUNCTION: a hop's host is about to be looked up
 * (not in the DNS cache). start_one() judged the job's URL, but a redirect
 * from it (from an IP address, never looked up, too) to a name whose server
 * does not answer started lookups no cap held back: a thread per stopped
 * job. Refused, the transfer fails (COULDNT_RESOLVE_HOST) with rq->err. */
static int resolver_start(void *resolver_state, void *reserved, void *userdata)
{
    struct http_request *rq = userdata;
    char *url = NULL;
    if (!rq)
        return 1;       /* parked: its job is gone */
    curl_easy_getinfo(rq->easy, CURLINFO_EFFECTIVE_URL, &url);
    rq->lookup_refused = url && refuse_lookup(rq, url, NULL);
    return rq->lookup_refused;
}

static void request_reset(struct http_request *rq)
{
    if (rq->easy) {
        if (rq->running) {
            http.transfers--;
            if (!park(rq))
                curl_multi_remove_handle(http.multi, rq->easy);
        }
        if (rq->easy)
            easy_put(rq->easy);
        rq->easy = NULL;
    }
    lookup_end(rq);
    free(rq->errbuf);
    rq->errbuf = NULL;
    rq->running = rq->failed = false;
    rq->refused_addresses = rq->opened_sockets = 0;
    rq->hop_https = rq->downgraded = rq->lookup_refused = false;
    free(rq->hop_url);
    rq->hop_url = NULL;
    http_response_reset(&rq->resp);
    json_decref(rq->outcome);
    rq->outcome = NULL;
    free(rq->err);
    rq->err = NULL;
}

static void http_free(struct job *job)
{
    struct http_job *hj = job->exec_state;
    if (!hj)
        return;
    /* Every attempt ends through http_cancel or job_report, both off the
     * queue; this keeps the list sound should a job ever be freed sooner. */
    wait_remove(hj);
    for (int i = 0; i < hj->n; i++) {
        struct http_request *rq = &hj->reqs[i];
        request_reset(rq);
        curl_slist_free_all(rq->own_headers);
        free(rq->shown_url);
        curl_url_cleanup(rq->uh);      /* after request_reset(): no transfer reads it */
    }
    curl_slist_free_all(hj->headers);
    free(hj->reqs);
    free(hj);
    job->exec_state = NULL;
}

static int http_parse(struct job *job, const json_t *spec, struct job_error *err)
{
    static const char *const fields[] = {"url", "method", "headers", "body", "response",
                                         "max_bytes", "raise_for_status", "follow_redirects",
                                         "urls", "requests", "concurrency", NULL};
    if (spec_check_fields(spec, "http", fields, err))
        return -1;
    if (!http.multi) {
        job_error_set(err, ERR_UNAVAILABLE, "http jobs are unavailable (libcurl not initialised)");
        return -1;
    }
    json_t *url = json_object_get(spec, "url");
    json_t *urls = json_object_get(spec, "urls");
    json_t *requests = json_object_get(spec, "requests");
    if (!!url + !!urls + !!requests != 1) {
        job_error_set(err, ERR_INVALID_JOB, "http: give exactly one of url, urls or requests");
        return -1;
    }
    json_t *list = urls ? urls : requests;
    if (list && (!json_is_array(list) || json_array_size(list) < 1)) {
        job_error_set(err, ERR_INVALID_JOB, "http.%s: must be a list of 1..%d items",
                      urls ? "urls" : "requests", MAX_BATCH);
        return -1;
    }
    if (list && json_array_size(list) > MAX_BATCH) {
        job_error_set(err, ERR_INVALID_JOB,
                      "http.%s: %zu requests, more than the %d one job may have; "
                      "split them over several jobs",
                      urls ? "urls" : "requests", json_array_size(list), MAX_BATCH);
        return -1;
    }
    struct http_job *hj = calloc(1, sizeof(*hj));
    if (!hj) {
        job_error_set(err, ERR_INTERNAL, "out of memory");
        return -1;
    }
    hj->job = job;
    hj->batch = list != NULL;
    hj->n = list ? (int)json_array_size(list) : 1;
    hj->reqs = calloc((size_t)hj->n, sizeof(*hj->reqs));
    job->exec_state = hj;       /* http_free() cleans up after any failure below */
    if (!hj->reqs) {
        job_error_set(err, ERR_INTERNAL, "out of memory");
        return -1;
    }
    hj->concurrency = job->d->cfg.http_concurrency;
    json_t *c = json_object_get(spec, "concurrency");
    if (c) {
        if (!hj->batch || !json_is_integer(c) || json_integer_value(c) < 1 ||
            json_integer_value(c) > MAX_CONCURRENCY) {
            job_error_set(err, ERR_INVALID_JOB,
                          "http.concurrency: an integer 1..%d, for urls or requests only",
                          MAX_CONCURRENCY);
            return -1;
        }
        hj->concurrency = (int)json_integer_value(c);
    }
    hj->budget.max = hj->batch ? job->d->cfg.http_max_batch_bytes : INT64_MAX;
    json_t *headers = json_object_get(spec, "headers");
    if (headers && parse_headers(headers, "http.headers", &hj->headers, err))
        return -1;
    for (int i = 0; i < hj->n; i++) {
        struct http_request *rq = &hj->reqs[i];
        char where[48];
        rq->hj = hj;
        rq->index = i;
        rq->resp.budget = &hj->budget;
        if (!hj->batch) {
            snprintf(where, sizeof(where), "http");
            if (parse_request(hj, rq, NULL, url, spec, where, err))
                return -1;
        } else if (urls) {
            snprintf(where, sizeof(where), "http.urls[%d]", i);
            if (parse_request(hj, rq, NULL, json_array_get(urls, (size_t)i), spec, where, err))
                return -1;
        } else {
            json_t *req = json_array_get(requests, (size_t)i);
            snprintf(where, sizeof(where), "http.requests[%d]", i);
            if (!json_is_object(req)) {
                job_error_set(err, ERR_INVALID_JOB, "%s: must be an object", where);
                return -1;
            }
            if (object_check_fields(req, where, request_fields, err) ||
                parse_request(hj, rq, req, json_object_get(req, "url"), spec, where, err))
                return -1;
        }
    }
    runner_charge_parsed(job, (int64_t)hj->n * REQUEST_PARSED_COST);
    return 0;
}

/* ---- transfers ------------------------------------------------------------- */

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct http_request *rq = userdata;
    size_t n = size * nmemb;
    if (!rq || !http_response_body(&rq->resp, ptr, n))
        return CURL_WRITEFUNC_ERROR;
    return n;
}

static size_t on_header(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct http_request *rq = userdata;
    size_t n = size * nmemb;
    if (!rq)
        return 0;
    http_response_header(&rq->resp, ptr, n);
    return n;
}

static int request_setup(struct http_job *hj, struct http_request *rq)
{
    const struct config *cfg = &hj->job->d->cfg;
    CURL *e = easy_get();
    if (!e)
        return -1;
    rq->easy = e;
    if (!(rq->errbuf = calloc(1, CURL_ERROR_SIZE)))
        return -1;
    if (http_response_begin(&rq->resp))
        return -1;
    curl_easy_setopt(e, CURLOPT_CURLU, rq->uh);
    curl_easy_setopt(e, CURLOPT_PRIVATE, rq);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, rq->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    /* A transfer removed while its name is being looked up (a timeout, a
     * cancel) would otherwise join the resolver's thread, stalling the whole
     * loop until getaddrinfo() returns: seconds, for a name server that
     * answers late. With this the thread is left to finish on its own. */
    curl_easy_setopt(e, CURLOPT_QUICK_EXIT, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, rq->follow_redirects ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, (long)MAX_REDIRECTS);
    /* Environment proxies are not the daemon's business. */
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_USERAGENT, cfg->http_user_agent);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, rq->headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, rq);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, rq);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, rq);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, close_socket);
    curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, before_request);
    curl_easy_setopt(e, CURLOPT_PREREQDATA, rq);
    curl_easy_setopt(e, CURLOPT_RESOLVER_START_FUNCTION, resolver_start);
    curl_easy_setopt(e, CURLOPT_RESOLVER_START_DATA, rq);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (cfg->http_ca_file && *cfg->http_ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, cfg->http_ca_file);
    /* The runner's timer is the real limit; this is a second guard. */
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)hj->job->timeout_ms + 1000L);
    if (http.share)
        curl_easy_setopt(e, CURLOPT_SHARE, http.share);
    if (!strcmp(rq->method, "HEAD"))
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    else if (strcmp(rq->method, "GET") && strcmp(rq->method, "POST"))
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, rq->method);
    if (rq->body || !strcmp(rq->method, "POST")) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, rq->body ? rq->body : "");
        if (strcmp(rq->method, "POST"))
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, rq->method);
    }
    return 0;
}

/* Turn a finished transfer into its result or error. */
static void request_outcome(struct http_request *rq, CURLcode code)
{
    long status = 0;
    struct job_error e = {0};
    curl_easy_getinfo(rq->easy, CURLINFO_RESPONSE_CODE, &status);
    rq->failed = true;
    if (rq->downgraded || rq->lookup_refused) {
        /* rq->err was set by refuse_downgrade() or resolver_start(). */
    } else if (http_response_refused(&rq->resp, SHOWN_URL(rq), &e)) {
        *request_error(rq) = e;     /* which bound the body went over */
    } else if (rq->refused_addresses && !rq->opened_sockets &&
               (code == CURLE_COULDNT_CONNECT || code == CURLE_ABORTED_BY_CALLBACK)) {
        /* Every address of this hop was refused: by open_socket(), or by
         * before_request() for a cached connection. Had libcurl gone on to
         * an allowed address, the transfer stands on its own, and a failure
         * to connect there is an ordinary (retried) one. */
        job_error_set(request_error(rq), ERR_FORBIDDEN,
                      "%s: the address is loopback, private or link-local "
                      "(http.allow_private is false)",
                      SHOWN_URL(rq));
    } else if (code == CURLE_OPERATION_TIMEDOUT) {
        job_error_set(request_error(rq), ERR_TIMEOUT, "%s: %s", SHOWN_URL(rq),
                      rq->errbuf[0] ? rq->errbuf : curl_easy_strerror(code));
    } else if (code != CURLE_OK) {
        job_error_set(request_error(rq), ERR_HTTP_ERROR, "%s: %s", SHOWN_URL(rq),
                      rq->errbuf[0] ? rq->errbuf : curl_easy_strerror(code));
    } else {
        rq->outcome = http_response_result(&rq->resp, status, rq->raise_for_status, rq->hj->batch,
                                           SHOWN_URL(rq), &e);
        rq->failed = rq->outcome == NULL;
        if (rq->failed)
            *request_error(rq) = e;
    }
    http_response_end(&rq->resp, rq->failed);
}

static void job_report(struct http_job *hj)
{
    struct job *job = hj->job;
    if (!hj->batch) {
        struct http_request *rq = &hj->reqs[0];
        if (rq->failed) {
            job_fail_with(job, request_failure(rq));
        } else {
            json_t *res = rq->outcome;
            rq->outcome = NULL;
            job_succeed(job, res);
        }
        return;
    }
    json_t *results = json_array();
    int ok = 0;
    for (int i = 0; i < hj->n; i++) {
        struct http_request *rq = &hj->reqs[i];
        if (rq->failed) {
            json_array_append_new(results,
                                  json_pack("{s:o}", "error", result_error_json(request_failure(rq))));
        } else {
            json_array_append(results, rq->outcome);
            ok++;
        }
    }
    job_succeed(job, json_pack("{s:o, s:i, s:i}", "results", results, "succeeded", ok, "failed",
                               hj->n - ok));
}

static void check_done(void)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(http.multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        /* Copy out before removing: the message dies with the handle. */
        CURL *e = msg->easy_handle;
        CURLcode code = msg->data.result;
        struct http_request *rq = NULL;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&rq);
        if (!rq) {
            unpark(e);
            continue;
        }
        curl_multi_remove_handle(http.multi, e);
        lookup_end(rq);
        rq->running = false;
        http.transfers--;
        request_outcome(rq, code);
        easy_put(rq->easy);
        rq->easy = NULL;
        free(rq->errbuf);
        rq->errbuf = NULL;
        free(rq->hop_url);      /* like errbuf: a batch's finished items keep none */
        rq->hop_url = NULL;
        struct http_job *hj = rq->hj;
        hj->running--;
        hj->finished++;
        if (hj->finished == hj->n)
            job_report(hj);
        else
            start_transfers(hj);
    }
    start_transfers(NULL);      /* the slots freed go to whoever waits */
}

/* ---- the wait queue -----------------------------------------------------------
 * libcurl keeps the transfers it cannot give a connection yet in a pending
 * list and pays for it on every transfer: with 1,000 jobs in flight and 50
 * connections, ~700 pending transfers halved bench/run's http rate (jobd
 * 47 -> 99 us of CPU a job). So libcurl gets at most http.max_connections
 * transfers at once; the rest wait here, and jobs take turns, one transfer
 * each, in the order they asked.
 *
 * Turns alone do not help a job that comes after a batch took every slot
 * while nobody waited: it waited for one of the batch's requests to end,
 * however slow, and could time out unstarted. So the last free slot is
 * kept for a job with no transfer running (may_start). */

static bool wants_transfer(const struct http_job *hj)
{
    return hj->running < hj->concurrency && hj->next < hj->n;
}

static bool slot_free(void)
{
    return http.transfers < http.d->cfg.http_max_connections;
}

/* Whether HJ may take a free slot now: not the last one while it has
 * transfers running. */
static bool may_start(const struct http_job *hj)
{
    return http.d->cfg.http_max_connections - http.transfers > (hj->running ? 1 : 0);
}

static void wait_append(struct http_job *hj)
{
    if (hj->queued)
        return;
    hj->queued = true;
    http.waiting++;
    hj->qnext = NULL;
    hj->qprev = http.wait_tail;
    if (http.wait_tail)
        http.wait_tail->qnext = hj;
    else
        http.wait_head = hj;
    http.wait_tail = hj;
}

static void wait_remove(struct http_job *hj)
{
    if (!hj->queued)
        return;
    if (hj->qprev)
        hj->qprev->qnext = hj->qnext;
    else
        http.wait_head = hj->qnext;
    if (hj->qnext)
        hj->qnext->qprev = hj->qprev;
    else
        http.wait_tail = hj->qprev;
    hj->queued = false;
    http.waiting--;
    hj->qprev = hj->qnext = NULL;
}

static bool start_one(struct http_job *hj);

/* HJ wants more transfers (or, HJ NULL, a slot was freed). With nobody
 * waiting they start now, as many as there are free slots; the rest wait
 * their turn, which comes when this loop pass ends (start_waiting). */
static void start_transfers(struct http_job *hj)
{
    if (hj && !http.wait_head) {
        while (wants_transfer(hj) && may_start(hj))
            if (!start_one(hj))
                return;         /* that ended the job */
    }
    if (hj && wants_transfer(hj))
        wait_append(hj);
    if (http.wait_head)
        event_active(http.kick, EV_TIMEOUT, 0);
}

/* Start HJ's next request; false when that ended the job (HJ may be gone). */
static bool start_one(struct http_job *hj)
{
    struct http_request *rq = &hj->reqs[hj->next++];
    if (refuse_lookup(rq, rq->url, SHOWN_URL(rq))) {
        /* refused: rq->err says why, and it fails below */
    } else if (request_setup(hj, rq) ||
               curl_multi_add_handle(http.multi, rq->easy) != CURLM_OK) {
        job_error_set(request_error(rq), ERR_INTERNAL, "%s: cannot start the transfer",
                      SHOWN_URL(rq));
    } else {
        rq->running = true;
        hj->running++;
        http.transfers++;
        return true;
    }
    rq->failed = true;
    hj->finished++;
    if (hj->finished == hj->n) {
        job_report(hj);
        return false;
    }
    return true;
}

static void start_waiting(evutil_socket_t fd, short what, void *arg)
{
    while (slot_free()) {
        /* The first in turn that may start; with one slot left, that is
         * the first with no transfer running (the others keep their turn). */
        struct http_job *hj = http.wait_head;
        while (hj && !may_start(hj))
            hj = hj->qnext;
        if (!hj)
            break;
        wait_remove(hj);
        if (start_one(hj) && wants_transfer(hj))
            wait_append(hj);    /* its next turn comes after the others' */
    }
}

/* ---- libcurl <-> libevent -------------------------------------------------- */

static struct sock_watch *watch_of(curl_socket_t s, bool create)
{
    if (s < 0)
        return NULL;
    if (s >= http.nwatches) {
        if (!create)
            return NULL;
        int n = http.nwatches ? http.nwatches : 64;
        while (n <= s)
            n *= 2;
        struct sock_watch **grown = realloc(http.watches, (size_t)n * sizeof(*grown));
        if (!grown)
            return NULL;
        memset(grown + http.nwatches, 0, (size_t)(n - http.nwatches) * sizeof(*grown));
        http.watches = grown;
        http.nwatches = n;
    }
    if (!http.watches[s] && create)
        http.watches[s] = calloc(1, sizeof(struct sock_watch));
    return http.watches[s];
}

static void unregister(struct sock_watch *w)
{
    if (w->live)
        event_del(&w->ev);
    if (w->wanted)
        http.sockets--;
    w->live = w->wanted = false;
}

static void on_socket_event(evutil_socket_t fd, short kind, void *arg)
{
    struct sock_watch *w = arg;
    if (!w->wanted) {
        unregister(w);      /* a cached connection woke: the server closed it */
        return;
    }
    int action = (kind & EV_READ ? CURL_CSELECT_IN : 0) | (kind & EV_WRITE ? CURL_CSELECT_OUT : 0);
    int running;
    curl_multi_socket_action(http.multi, fd, action, &running);
    /* The timer is libcurl's to delete (set_timer(-1)), not ours when nothing
     * runs: check_done() may just have added the next transfer of a batch,
     * and that transfer starts from the timer libcurl armed in add_handle. */
    check_done();
}

static void on_timer(evutil_socket_t fd, short kind, void *arg)
{
    int running;
    curl_multi_socket_action(http.multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done();
}

/* CURLMOPT_TIMERFUNCTION: -1 deletes the timer, anything else (0 too) arms it.
 * libcurl may not be called from here. */
static int set_timer(CURLM *multi, long timeout_ms, void *userp)
{
    if (timeout_ms < 0) {
        evtimer_del(http.timer);
    } else {
        timer_add_ms(http.timer, timeout_ms);
    }
    return 0;
}

/* A socket libcurl watches but did not open through open_socket(): the
 * threaded resolver's, there while E looks a name up. */
static void resolver_socket(CURL *e, bool present)
{
    struct http_request *rq = NULL;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&rq);
    if (!rq)
        return;         /* parked: counted until unpark() */
    if (present && !rq->lookup_host)
        lookup_begin(rq);
    else if (!present)
        lookup_end(rq);
}

static int on_socket(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    struct sock_watch *w = watch_of(s, what != CURL_POLL_REMOVE);
    if (w && !w->ours && e)
        resolver_socket(e, what != CURL_POLL_REMOVE);
    if (what == CURL_POLL_REMOVE) {
        if (w && !w->ours) {
            unregister(w);      /* libcurl closes it next, not through us */
        } else if (w && w->wanted) {
            w->wanted = false;  /* left registered: see struct sock_watch */
            http.sockets--;
        }
        return 0;
    }
    if (!w)
        return -1;
    short kind = (short)((what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0));
    if (!w->wanted)
        http.sockets++;
    w->wanted = true;
    if (w->live && w->kind == kind)
        return 0;
    if (w->live)
        event_del(&w->ev);
    event_assign(&w->ev, http.d->base, s, (short)(kind | EV_PERSIST), on_socket_event, w);
    event_add(&w->ev, NULL);
    w->live = true;
    w->kind = kind;
    return 0;
}

/* CURLOPT_CLOSESOCKETFUNCTION: the registration must go before the fd does,
 * or a new socket given the same number would inherit it. */
static int close_socket(void *clientp, curl_socket_t s)
{
    struct sock_watch *w = watch_of(s, false);
    if (w) {
        unregister(w);
        w->ours = false;
    }
    return close(s);
}

/* ---- executor hooks ---------------------------------------------------------- */

static void http_start(struct job *job)
{
    struct http_job *hj = job->exec_state;
    for (int i = 0; i < hj->n; i++)
        request_reset(&hj->reqs[i]);
    hj->next = hj->running = hj->finished = 0;
    hj->budget.kept = 0;
    start_transfers(hj);
}

/* From loop context (timer or control message), never inside a curl callback:
 * remove every transfer of the job; no DONE message follows for them. */
static void http_cancel(struct job *job)
{
    struct http_job *hj = job->exec_state;
    if (hj->finished == hj->n)
        return;
    wait_remove(hj);
    for (int i = 0; i < hj->n; i++)
        request_reset(&hj->reqs[i]);
    hj->finished = hj->n;
    hj->running = 0;
    start_transfers(NULL);      /* its slots go to whoever waits */
    job_fail(job, ERR_CANCELLED, "http transfer stopped");
}

void http_counts(int *sockets, int *transfers, int *waiting, int *abandoned_lookups)
{
    *sockets = http.sockets;
    *transfers = http.transfers;
    *waiting = http.waiting;
    *abandoned_lookups = http.lookups.abandoned;
}

int http_executor_init(struct daemon *d)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return -1;
    http.d = d;
    http.multi = curl_multi_init();
    http.timer = evtimer_new(d->base, on_timer, NULL);
    http.kick = event_new(d->base, -1, 0, start_waiting, NULL);
    if (!http.multi || !http.timer || !http.kick)
        return -1;
    curl_multi_setopt(http.multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(http.multi, CURLMOPT_TIMERFUNCTION, set_timer);
    curl_multi_setopt(http.multi, CURLMOPT_MAX_TOTAL_CONNECTIONS,
                      (long)d->cfg.http_max_connections);
    /* The connection cache otherwise holds 4x the handles added at the time:
     * when a batch winds down it closes connections the next job reopens
     * (bench/http saw 5-17% of requests on new connections). */
    curl_multi_setopt(http.multi, CURLMOPT_MAXCONNECTS, (long)d->cfg.http_max_connections);
    /* DNS answers and TLS sessions shared by every transfer (one thread). */
    http.share = curl_share_init();
    if (http.share) {
        curl_share_setopt(http.share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
        curl_share_setopt(http.share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    }
    return 0;
}

void http_executor_shutdown(struct daemon *d)
{
    while (http.parked) {
        struct parked *p = http.parked;
        http.parked = p->next;
        curl_multi_remove_handle(http.multi, p->easy);  /* its thread ends alone */
        curl_easy_cleanup(p->easy);
        free(p->host);
        free(p);
    }
    lookups_free(&http.lookups);
    while (nspare)
        curl_easy_cleanup(spare[--nspare]);
    if (http.multi)
        curl_multi_cleanup(http.multi);
    if (http.share)
        curl_share_cleanup(http.share);
    if (http.timer)
        event_free(http.timer);
    if (http.kick)
        event_free(http.kick);
    for (int i = 0; i < http.nwatches; i++) {
        if (http.watches[i])
            unregister(http.watches[i]);
        free(http.watches[i]);
    }
    free(http.watches);
    memset(&http, 0, sizeof(http));
    curl_global_cleanup();
}

const struct executor http_executor = {
    .type = "http",
    .parse = http_parse,
    .start = http_start,
    .cancel = http_cancel,
    .free = http_free,
};
