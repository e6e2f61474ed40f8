/* config.c - the settings table and its validation (see config.h).
 *
 * Every setting is one row of `settings`: its dotted name, type, where it
 * lives in struct config, default, range and whether SIGHUP may change it.
 * Loading walks the file, not the table, so any name the table lacks is
 * reported; then every row is checked. Errors are collected, not stopped at:
 * an operator fixes them all in one go.
 */
#include <arpa/inet.h>
#include <libconfig.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "sql_session.h"

enum cf_type { CF_INT, CF_INT64, CF_DOUBLE, CF_BOOL, CF_STRING, CF_STRLIST, CF_QUERIES, CF_LEVEL };

struct errbuf {
    char *buf;
    size_t len, used;
    int count;
    /* libconfig names an @include'd file as written: a relative name is
     * shown joined to the directory it was found in (see include_dir()). */
    const char *main_file, *include_dir;
};

typedef int cf_check_fn(const char *value, char *why, size_t whylen);

struct cf_setting {
    const char *name;
    enum cf_type type;
    size_t offset;
    size_t count_offset;        /* CF_STRLIST, CF_QUERIES: where the count lives */
    long long def_int;
    double def_double;
    const char *def_str;
    double min, max;            /* numbers: range; strings: length range */
    bool reloadable;
    cf_check_fn *check;         /* strings: extra validation */
};

static int check_ip(const char *v, char *why, size_t n);
static int check_listen(const char *v, char *why, size_t n);

#define OFF(f) offsetof(struct config, f)
#define INT(n, f, d, lo, hi, rl) {n, CF_INT, OFF(f), 0, d, 0, NULL, lo, hi, rl, NULL}
#define INT64(n, f, d, lo, hi, rl) {n, CF_INT64, OFF(f), 0, d, 0, NULL, lo, hi, rl, NULL}
#define DBL(n, f, d, lo, hi, rl) {n, CF_DOUBLE, OFF(f), 0, 0, d, NULL, lo, hi, rl, NULL}
#define BOOL(n, f, d, rl) {n, CF_BOOL, OFF(f), 0, d, 0, NULL, 0, 1, rl, NULL}
#define STR(n, f, d, lo, hi, rl, chk) {n, CF_STRING, OFF(f), 0, 0, 0, d, lo, hi, rl, chk}
#define LIST(n, f, c, lo, hi, rl) {n, CF_STRLIST, OFF(f), OFF(c), 0, 0, NULL, lo, hi, rl, NULL}

static const struct cf_setting settings[] = {
    STR("redis.host", redis_host, "127.0.0.1", 1, 64, false, check_ip),
    INT("redis.port", redis_port, 6379, 1, 65535, false),
    STR("redis.path", redis_path, "", 0, 107, false, NULL),
    INT("redis.db", redis_db, 0, 0, 10000, false),
    STR("redis.username", redis_username, "", 0, 256, false, NULL),
    STR("redis.password", redis_password, "", 0, 4096, false, NULL),
    STR("redis.namespace", ns, "jobd", 1, CONFIG_NS_MAX, false, config_check_key_chars),
    LIST("intake.channels", channels, nchannels, 0, 256, false),
    LIST("intake.streams", streams, nstreams, 1, CONFIG_MAX_STREAMS, false),
    INT64("intake.visibility_timeout_ms", visibility_timeout_ms, 60000, 1000, 86400000, false),
    INT("intake.batch", batch, 100, 1, 10000, false),
    INT64("intake.linger_us", linger_us, 0, 0, 100000, true),
    INT("limits.max_inflight", max_inflight, 1000, 1, 1000000, true),
    INT("limits.max_group_children", max_group_children, 1000, 1, 1000000, true),
    INT64("limits.max_job_bytes", max_job_bytes, 1048576, 64, 512LL << 20, true),
    INT64("limits.max_held_bytes", max_held_bytes, 256LL << 20, 64LL << 10, 64LL << 30, true),
    INT64("limits.max_record_bytes", max_record_bytes, 128LL << 20, 1LL << 10, 512LL << 20, true),
    INT64("jobs.timeout_ms", timeout_ms, 30000, 1, 86400000, true),
    INT64("jobs.result_ttl", result_ttl, 3600, 1, 31536000, true),
    INT64("jobs.cancel_ttl", cancel_ttl, CANCEL_TTL_DEFAULT, 1, CANCEL_TTL_MAX, true),
    INT("jobs.retry.attempts", retry.attempts, 3, 1, 100, true),
    INT64("jobs.retry.delay_ms", retry.delay_ms, 1000, 0, 86400000, true),
    DBL("jobs.retry.backoff", retry.backoff, 2.0, 1.0, 100.0, true),
    INT64("jobs.retry.max_delay_ms", retry.max_delay_ms, 60000, 0, 86400000, true),
    BOOL("jobs.retry.jitter", retry.jitter, 1, true),
    INT("threads.size", threads, 0, 0, 1024, false),
    INT("http.concurrency", http_concurrency, 10, 1, 1000, true),
    STR("http.user_agent", http_user_agent, "jobd/" PACKAGE_VERSION, 1, 256, true, NULL),
    INT64("http.max_bytes", http_max_bytes, 1048576, 1, 1LL << 30, true),
    INT64("http.max_batch_bytes", http_max_batch_bytes, 64LL << 20, 1, 1LL << 34, true),
    BOOL("http.allow_private", http_allow_private, 0, true),
    STR("http.ca_file", http_ca_file, "", 0, 4096, true, NULL),
    /* Restart: libcurl's connection limits are set when its multi handle is
     * made, and the transfer slots must agree with them. */
    INT("http.max_connections", http_max_connections, 100, 1, 10000, false),
    INT("http.max_abandoned_lookups", http_max_abandoned_lookups, 64, 1, 100000, true),
    STR("postgres.conninfo", pg_conninfo, "", 0, 4096, false, NULL),
    INT("postgres.min_size", pg_min_size, 5, 0, 1000, false),
    INT("postgres.max_size", pg_max_size, 20, 1, 1000, false),
    INT64("postgres.idle_timeout_ms", pg_idle_timeout_ms, 60000, 100, 86400000, true),
    INT("postgres.pipeline", pg_pipeline, 1, 1, 256, true),
    INT64("postgres.pipeline_pack_us", pg_pipeline_pack_us, 500, 0, 60000000, true),
    BOOL("postgres.allow_raw_sql", pg_allow_raw_sql, 0, true),
    {"postgres.queries", CF_QUERIES, OFF(pg_queries), OFF(pg_nqueries), 0, 0, NULL, 0, 0, true,
     NULL},
    STR("files.root", files_root, "", 0, 4096, true, NULL),
    INT64("files.max_bytes", files_max_bytes, 16LL << 20, 1, 1LL << 30, true),
    STR("admin.listen", admin_listen, "127.0.0.1:9187", 0, 128, false, check_listen),
    /* Read at every accept: a reload applies to the next connection (those
     * open above a lowered cap are left to finish). */
    INT("admin.max_connections", admin_max_connections, 64, 1, 10000, true),
    INT64("shutdown.drain_ms", drain_ms, 25000, 0, 3600000, true),
    {"log.level", CF_LEVEL, OFF(log_level), 0, LOG_INFO, 0, "info", 0, 0, true, NULL},
    /* Restart: the name is the consumer that owns this daemon's pending
     * entries, and the name of its worker key and transaction markers. */
    STR("worker.name", worker_name, "", 0, 100, false, config_check_key_chars),
};
#define NSETTINGS (sizeof(settings) / sizeof(settings[0]))

/* ---- small helpers --------------------------------------------------------- */

static void *field(struct config *cfg, const struct cf_setting *s)
{
    return (char *)cfg + s->offset;
}

static const void *cfield(const struct config *cfg, const struct cf_setting *s)
{
    return (const char *)cfg + s->offset;
}

static void add_error(struct errbuf *e, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void add_error(struct errbuf *e, const char *file, int line, const char *fmt, ...)
{
    e->count++;
    if (!e->buf || e->used + 1 >= e->len)
        return;
    const char *dir = "", *sep = "";
    if (e->include_dir && file[0] != '/' && e->main_file && strcmp(file, e->main_file))
        dir = e->include_dir, sep = "/";
    int n = line > 0 ? snprintf(e->buf + e->used, e->len - e->used, "%s%s%s:%d: ", dir, sep,
                                file, line)
                     : snprintf(e->buf + e->used, e->len - e->used, "%s%s%s: ", dir, sep, file);
    if (n > 0)
        e->used = e->used + (size_t)n < e->len ? e->used + (size_t)n : e->len - 1;
    va_list ap;
    va_start(ap, fmt);
    n = vsnprintf(e->buf + e->used, e->len - e->used, fmt, ap);
    va_end(ap);
    if (n > 0)
        e->used = e->used + (size_t)n < e->len ? e->used + (size_t)n : e->len - 1;
    if (e->used + 1 < e->len) {
        e->buf[e->used++] = '\n';
        e->buf[e->used] = '\0';
    }
}

static const char *type_name(int t)
{
    switch (t) {
    case CONFIG_TYPE_GROUP: return "a group";
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_INT64: return "an integer";
    case CONFIG_TYPE_FLOAT: return "a number";
    case CONFIG_TYPE_STRING: return "a string";
    case CONFIG_TYPE_BOOL: return "a boolean";
    case CONFIG_TYPE_ARRAY:
    case CONFIG_TYPE_LIST: return "a list";
    }
    return "nothing";
}

static const char *expected_name(enum cf_type t)
{
    switch (t) {
    case CF_INT:
    case CF_INT64: return "an integer";
    case CF_DOUBLE: return "a number";
    case CF_BOOL: return "true or false";
    case CF_STRING:
    case CF_LEVEL: return "a string";
    case CF_STRLIST: return "a list of strings";
    case CF_QUERIES: return "a group of name = \"SQL\" settings";
    }
    return "?";
}

static int check_ip(const char *v, char *why, size_t n)
{
    unsigned char buf[16];
    if (inet_pton(AF_INET, v, buf) == 1 || inet_pton(AF_INET6, v, buf) == 1)
        return 0;
    snprintf(why, n, "must be a numeric IP address (a host name would cost a blocking DNS "
                     "lookup on every reconnect), got \"%s\"", v);
    return -1;
}

int config_check_key_chars(const char *v, char *why, size_t n)
{
    for (const char *p = v; *p; p++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-", *p)) {
            unsigned char c = (unsigned char)*p;
            if (c > ' ' && c < 0x7f)
                snprintf(why, n, "must be characters of [A-Za-z0-9._:-], got '%c' at position %d",
                         c, (int)(p - v) + 1);
            else
                snprintf(why, n, "must be characters of [A-Za-z0-9._:-], got byte 0x%02x at "
                         "position %d", c, (int)(p - v) + 1);
            return -1;
        }
    return 0;
}

static int check_listen(const char *v, char *why, size_t n)
{
    if (!*v)
        return 0;
    const char *colon = strrchr(v, ':');
    char host[64];
    unsigned char buf[16];
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : 0;
    /* Digits only: getaddrinfo(AI_NUMERICSERV) refuses "80x", " 80" or
     * "+80" at start-up, after -t and a reload have called them valid. */
    if (colon && (colon[1] < '0' || colon[1] > '9' || *end))
        port = 0;
    size_t hl = colon ? (size_t)(colon - v) : 0;
    if (colon && hl < sizeof(host)) {
        memcpy(host, v, hl);
        host[hl] = '\0';
        if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
            memmove(host, host + 1, hl - 2);
            host[hl - 2] = '\0';
        }
    }
    if (!colon || hl >= sizeof(host) || port < 1 || port > 65535 ||
        (inet_pton(AF_INET, host, buf) != 1 && inet_pton(AF_INET6, host, buf) != 1)) {
        snprintf(why, n, "must be \"IP:port\" or empty, got \"%s\"", v);
        return -1;
    }
    return 0;
}

/* ---- defaults -------------------------------------------------------------- */

static char **default_list(const char *ns, const char *suffix, int *count)
{
    char **list = calloc(2, sizeof(*list));
    if (!list)
        return NULL;
    size_t len = strlen(ns) + strlen(suffix) + 2;
    list[0] = malloc(len);
    if (!list[0]) {
        free(list);
        return NULL;
    }
    snprintf(list[0], len, "%s:%s", ns, suffix);
    *count = 1;
    return list;
}

static int set_default(struct config *cfg, const struct cf_setting *s)
{
    void *f = field(cfg, s);
    switch (s->type) {
    case CF_INT: *(int *)f = (int)s->def_int; break;
    case CF_INT64: *(int64_t *)f = s->def_int; break;
    case CF_DOUBLE: *(double *)f = s->def_double; break;
    case CF_BOOL: *(bool *)f = s->def_int != 0; break;
    case CF_LEVEL: *(int *)f = (int)s->def_int; break;
    case CF_STRING:
        if (!(*(char **)f = strdup(s->def_str)))
            return -1;
        break;
    case CF_STRLIST:
    case CF_QUERIES: break;     /* lists: filled after the namespace is known */
    }
    return 0;
}

static int fill_list_defaults(struct config *cfg)
{
    if (!cfg->channels && !(cfg->channels = default_list(cfg->ns, "jobs", &cfg->nchannels)))
        return -1;
    if (!cfg->streams && !(cfg->streams = default_list(cfg->ns, "queue", &cfg->nstreams)))
        return -1;
    return 0;
}

int config_defaults(struct config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < NSETTINGS; i++)
        if (set_default(cfg, &settings[i]))
            goto oom;
    if (fill_list_defaults(cfg))
        goto oom;
    return 0;
oom:
    config_free(cfg);
    return -1;
}

/* ---- loading --------------------------------------------------------------- */

static const struct cf_setting *find_setting(const char *name)
{
    for (size_t i = 0; i < NSETTINGS; i++)
        if (!strcmp(settings[i].name, name))
            return &settings[i];
    return NULL;
}

/* A group name the table knows ("redis", "jobs.retry"...). */
static bool known_group(const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < NSETTINGS; i++)
        if (!strncmp(settings[i].name, name, len) && settings[i].name[len] == '.')
            return true;
    return false;
}

static void free_list(char ***list, int *count)
{
    for (int i = 0; *list && i < *count; i++)
        free((*list)[i]);
    free(*list);
    *list = NULL;
    *count = 0;
}

static void free_queries(struct config *cfg)
{
    for (int i = 0; i < cfg->pg_nqueries; i++) {
        free(cfg->pg_queries[i].name);
        free(cfg->pg_queries[i].sql);
    }
    free(cfg->pg_queries);
    cfg->pg_queries = NULL;
    cfg->pg_nqueries = 0;
}

/* The file CS was read from: an @include'd one, or FILE (the main one). A
 * mistake named with the main file's name sent the operator to the wrong
 * file. */
static const char *setting_file(const config_setting_t *cs, const char *file)
{
    const char *f = cs ? config_setting_source_file(cs) : NULL;
    return f ? f : file;
}

static void load_number(struct config *cfg, const struct cf_setting *s, config_setting_t *cs,
                        const char *file, struct errbuf *e)
{
    int t = config_setting_type(cs);
    int line = config_setting_source_line(cs);
    bool integer = t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64;
    if (!integer && !(s->type == CF_DOUBLE && t == CONFIG_TYPE_FLOAT)) {
        add_error(e, file, line, "%s: expected %s, got %s", s->name, expected_name(s->type),
                  type_name(t));
        return;
    }
    double v = integer ? (double)config_setting_get_int64(cs) : config_setting_get_float(cs);
    if (v < s->min || v > s->max) {
        if (s->type == CF_DOUBLE)
            add_error(e, file, line, "%s: must be %g..%g, got %g", s->name, s->min, s->max, v);
        else
            add_error(e, file, line, "%s: must be %lld..%lld, got %lld", s->name,
                      (long long)s->min, (long long)s->max,
                      (long long)config_setting_get_int64(cs));
        return;
    }
    void *f = field(cfg, s);
    if (s->type == CF_INT)
        *(int *)f = (int)config_setting_get_int64(cs);
    else if (s->type == CF_INT64)
        *(int64_t *)f = config_setting_get_int64(cs);
    else
        *(double *)f = v;
}

static void load_string(struct config *cfg, const struct cf_setting *s, config_setting_t *cs,
                        const char *file, struct errbuf *e)
{
    int line = config_setting_source_line(cs);
    if (config_setting_type(cs) != CONFIG_TYPE_STRING) {
        add_error(e, file, line, "%s: expected %s, got %s", s->name, expected_name(s->type),
                  type_name(config_setting_type(cs)));
        return;
    }
    const char *v = config_setting_get_string(cs);
    size_t len = strlen(v);
    char why[512];
    if (s->type == CF_LEVEL) {
        int level = log_level_from_name(v);
        if (level < 0)
            add_error(e, file, line, "%s: must be debug, info, notice, warn or error, got \"%s\"",
                      s->name, v);
        else
            *(int *)field(cfg, s) = level;
        return;
    }
    if (len < s->min || len > s->max) {
        add_error(e, file, line, "%s: must be %d..%d characters long, got %zu", s->name,
                  (int)s->min, (int)s->max, len);
        return;
    }
    if (s->check && s->check(v, why, sizeof(why))) {
        add_error(e, file, line, "%s: %s", s->name, why);
        return;
    }
    char **f = field(cfg, s);
    char *copy = strdup(v);
    if (!copy) {
        add_error(e, file, line, "%s: out of memory", s->name);
        return;
    }
    free(*f);
    *f = copy;
}

static void load_list(struct config *cfg, const struct cf_setting *s, config_setting_t *cs,
                      const char *file, struct errbuf *e)
{
    int line = config_setting_source_line(cs);
    int t = config_setting_type(cs);
    if (t != CONFIG_TYPE_ARRAY && t != CONFIG_TYPE_LIST) {
        add_error(e, file, line, "%s: expected %s, got %s", s->name, expected_name(s->type),
                  type_name(t));
        return;
    }
    int n = config_setting_length(cs);
    if (n < s->min || n > s->max) {
        add_error(e, file, line, "%s: must hold %d..%d names, got %d", s->name, (int)s->min,
                  (int)s->max, n);
        return;
    }
    char **list = calloc((size_t)n + 1, sizeof(*list));
    for (int i = 0; list && i < n; i++) {
        config_setting_t *item = config_setting_get_elem(cs, (unsigned)i);
        const char *v = config_setting_get_string(item);
        if (!v || !*v || strlen(v) > 512) {
            add_error(e, setting_file(item, file), config_setting_source_line(item),
                      "%s: item %d must be a non-empty string of at most 512 bytes", s->name,
                      i + 1);
            int count = i;
            free_list(&list, &count);
            return;
        }
        list[i] = strdup(v);
    }
    char ***f = field(cfg, s);
    int *count = (int *)((char *)cfg + s->count_offset);
    free_list(f, count);
    *f = list;
    *count = n;
}

static void load_queries(struct config *cfg, const struct cf_setting *s, config_setting_t *cs,
                         const char *file, struct errbuf *e)
{
    int line = config_setting_source_line(cs);
    if (config_setting_type(cs) != CONFIG_TYPE_GROUP) {
        add_error(e, file, line, "%s: expected %s, got %s", s->name, expected_name(s->type),
                  type_name(config_setting_type(cs)));
        return;
    }
    int n = config_setting_length(cs);
    free_queries(cfg);
    cfg->pg_queries = calloc((size_t)n + 1, sizeof(*cfg->pg_queries));
    for (int i = 0; cfg->pg_queries && i < n; i++) {
        config_setting_t *q = config_setting_get_elem(cs, (unsigned)i);
        const char *name = config_setting_name(q);
        if (config_setting_type(q) != CONFIG_TYPE_STRING || !*config_setting_get_string(q)) {
            add_error(e, setting_file(q, file), config_setting_source_line(q),
                      "%s.%s: expected a non-empty SQL string, got %s", s->name, name,
                      type_name(config_setting_type(q)));
            continue;
        }
        struct named_query *nq = &cfg->pg_queries[cfg->pg_nqueries++];
        nq->name = strdup(name);
        nq->sql = strdup(config_setting_get_string(q));
        nq->session = nq->sql ? sql_session_effects(nq->sql) : 0;
    }
}

static void load_setting(struct config *cfg, config_setting_t *cs, const char *path,
                         const char *file, struct errbuf *e)
{
    const struct cf_setting *s = find_setting(path);
    int line = config_setting_source_line(cs);
    file = setting_file(cs, file);
    if (!s) {
        if (config_setting_type(cs) == CONFIG_TYPE_GROUP && known_group(path)) {
            int n = config_setting_length(cs);
            for (int i = 0; i < n; i++) {
                config_setting_t *child = config_setting_get_elem(cs, (unsigned)i);
                char sub[256];
                snprintf(sub, sizeof(sub), "%s.%s", path, config_setting_name(child));
                load_setting(cfg, child, sub, file, e);
            }
        } else {
            add_error(e, file, line, "%s: unknown setting", path);
        }
        return;
    }
    switch (s->type) {
    case CF_INT:
    case CF_INT64:
    case CF_DOUBLE: load_number(cfg, s, cs, file, e); break;
    case CF_BOOL:
        if (config_setting_type(cs) != CONFIG_TYPE_BOOL)
            add_error(e, file, line, "%s: expected %s, got %s", s->name, expected_name(s->type),
                      type_name(config_setting_type(cs)));
        else
            *(bool *)field(cfg, s) = config_setting_get_bool(cs);
        break;
    case CF_STRING:
    case CF_LEVEL: load_string(cfg, s, cs, file, e); break;
    case CF_STRLIST: load_list(cfg, s, cs, file, e); break;
    case CF_QUERIES: load_queries(cfg, s, cs, file, e); break;
    }
}

/* FILE's directory, as config_set_include_dir() takes it; NULL when FILE
 * has none (it is in the working directory, where libconfig looks anyway)
 * or out of memory. */
static char *include_dir(const char *file)
{
    const char *slash = strrchr(file, '/');
    if (!slash)
        return NULL;
    return slash == file ? strdup("/") : strndup(file, (size_t)(slash - file));
}

int config_load(const char *file, struct config *cfg, char *err, size_t errlen)
{
    struct errbuf e = {err, errlen, 0, 0, file, NULL};
    if (err && errlen)
        err[0] = '\0';
    if (config_defaults(cfg)) {
        add_error(&e, file, 0, "out of memory");
        return -1;
    }
    /* The default channel and stream names derive from the namespace, which
     * the file may set: they are filled in after it is read. */
    free_list(&cfg->channels, &cfg->nchannels);
    free_list(&cfg->streams, &cfg->nstreams);
    config_t lc;
    config_init(&lc);
    /* A relative @include is found beside the main file, not in the working
     * directory (systemd runs jobd in /). */
    char *dir = include_dir(file);
    if (dir)
        config_set_include_dir(&lc, dir);
    e.include_dir = dir;
    if (!config_read_file(&lc, file)) {
        if (config_error_type(&lc) == CONFIG_ERR_FILE_IO)
            add_error(&e, file, 0, "cannot read the file");
        else
            add_error(&e, config_error_file(&lc) ? config_error_file(&lc) : file,
                      config_error_line(&lc), "%s", config_error_text(&lc));
        config_destroy(&lc);
        config_free(cfg);
        free(dir);
        return -1;
    }
    config_setting_t *root = config_root_setting(&lc);
    int n = config_setting_length(root);
    for (int i = 0; i < n; i++) {
        config_setting_t *cs = config_setting_get_elem(root, (unsigned)i);
        load_setting(cfg, cs, config_setting_name(cs), file, &e);
    }
    if (cfg->pg_min_size > cfg->pg_max_size) {
        config_setting_t *cs = config_lookup(&lc, "postgres.min_size");
        add_error(&e, setting_file(cs, file), cs ? config_setting_source_line(cs) : 0,
                  "postgres.min_size: must not exceed postgres.max_size (%d), got %d",
                  cfg->pg_max_size, cfg->pg_min_size);
    }
    config_destroy(&lc);
    if (e.count == 0 && fill_list_defaults(cfg))
        add_error(&e, file, 0, "out of memory");
    free(dir);
    if (e.count) {
        config_free(cfg);
        return -1;
    }
    cfg->path = strdup(file);
    return 0;
}

void config_free(struct config *cfg)
{
    for (size_t i = 0; i < NSETTINGS; i++) {
        const struct cf_setting *s = &settings[i];
        if (s->type == CF_STRING) {
            char **f = field(cfg, s);
            free(*f);
            *f = NULL;
        } else if (s->type == CF_STRLIST) {
            free_list(field(cfg, s), (int *)((char *)cfg + s->count_offset));
        }
    }
    free_queries(cfg);
    free(cfg->path);
    memset(cfg, 0, sizeof(*cfg));
}

/* ---- reload ---------------------------------------------------------------- */

static bool same_value(const struct config *a, const struct config *b,
                       const struct cf_setting *s)
{
    const void *fa = cfield(a, s), *fb = cfield(b, s);
    switch (s->type) {
    case CF_INT:
    case CF_LEVEL: return *(const int *)fa == *(const int *)fb;
    case CF_INT64: return *(const int64_t *)fa == *(const int64_t *)fb;
    case CF_DOUBLE: return *(const double *)fa == *(const double *)fb;
    case CF_BOOL: return *(const bool *)fa == *(const bool *)fb;
    case CF_STRING: return !strcmp(*(char *const *)fa, *(char *const *)fb);
    case CF_STRLIST: {
        int na = *(const int *)((const char *)a + s->count_offset);
        int nb = *(const int *)((const char *)b + s->count_offset);
        if (na != nb)
            return false;
        for (int i = 0; i < na; i++)
            if (strcmp((*(char **const *)fa)[i], (*(char **const *)fb)[i]))
                return false;
        return true;
    }
    case CF_QUERIES: return true;   /* reloadable anyway */
    }
    return true;
}

int config_restart_needed(const struct config *old_cfg, const struct config *new_cfg, char *buf,
                          size_t buflen)
{
    int count = 0;
    size_t used = 0;
    if (buflen)
        buf[0] = '\0';
    for (size_t i = 0; i < NSETTINGS; i++) {
        const struct cf_setting *s = &settings[i];
        if (s->reloadable || same_value(old_cfg, new_cfg, s))
            continue;
        int n = snprintf(buf + used, buflen > used ? buflen - used : 0, "%s%s",
                         count ? ", " : "", s->name);
        if (n > 0 && used + (size_t)n < buflen)
            used += (size_t)n;
        count++;
    }
    return count;
}

static void swap_bytes(void *a, void *b, size_t n)
{
    unsigned char tmp[sizeof(int64_t) > sizeof(void *) ? sizeof(int64_t) : sizeof(void *)];
    memcpy(tmp, a, n);
    memcpy(a, b, n);
    memcpy(b, tmp, n);
}

static size_t field_size(enum cf_type t)
{
    switch (t) {
    case CF_INT:
    case CF_LEVEL: return sizeof(int);
    case CF_INT64: return sizeof(int64_t);
    case CF_DOUBLE: return sizeof(double);
    case CF_BOOL: return sizeof(bool);
    case CF_STRING:
    case CF_STRLIST:
    case CF_QUERIES: return sizeof(void *);
    }
    return 0;
}

void config_keep_restart_only(struct config *fresh, struct config *old_cfg)
{
    for (size_t i = 0; i < NSETTINGS; i++) {
        const struct cf_setting *s = &settings[i];
        if (s->reloadable)
            continue;
        swap_bytes(field(fresh, s), field(old_cfg, s), field_size(s->type));
        if (s->type == CF_STRLIST)
            swap_bytes((char *)fresh + s->count_offset, (char *)old_cfg + s->count_offset,
                       sizeof(int));
    }
}

bool config_is_pattern(const char *channel)
{
    return strpbrk(channel, "*?[") != NULL;
}

const struct named_query *config_query(const struct config *cfg, const char *name)
{
    for (int i = 0; i < cfg->pg_nqueries; i++)
        if (!strcmp(cfg->pg_queries[i].name, name))
            return &cfg->pg_queries[i];
    return NULL;
}
