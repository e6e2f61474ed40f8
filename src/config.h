/* config.h - the daemon's settings, loaded from a libconfig file.
 *
 * Every setting is declared once, in the table in config.c (name, type,
 * default, range, reloadable), and validated from it: a wrong type, a value
 * out of range or an unknown name is an error naming file, line and setting.
 */
#ifndef JOBD_CONFIG_H
#define JOBD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* jobs.cancel_ttl when unset (jobctl without -c uses it too): an hour; and
 * the most it may be, a year (also the longest any cancel is kept). */
#define CANCEL_TTL_DEFAULT 3600
#define CANCEL_TTL_MAX 31536000

/* The most intake.streams may list: tables kept per stream (metrics.c) are
 * sized by it. */
#define CONFIG_MAX_STREAMS 256
/* redis.namespace: at most this many bytes (jobctl -n too). */
#define CONFIG_NS_MAX 64

struct retry_policy {
    int attempts;           /* total attempts, >= 1 */
    int64_t delay_ms;       /* wait before attempt 2 */
    double backoff;         /* multiplier per further attempt, >= 1.0 */
    int64_t max_delay_ms;   /* cap on one wait */
    bool jitter;            /* multiply by a random factor in [0.5, 1.0] */
};

struct named_query {
    char *name;
    char *sql;
    unsigned session;       /* what it may leave on its session: sql_session_effects(),
                             * worked out once here rather than for every job */
};

struct config {
    char *path;             /* the file it was loaded from */

    /* redis */
    char *redis_host;       /* IP address; a host name costs a blocking lookup */
    int redis_port;
    char *redis_path;       /* unix socket; wins over host/port when set */
    int redis_db;
    char *redis_username;
    char *redis_password;
    char *ns;               /* key namespace, "jobd" */

    /* intake */
    char **channels;        /* full channel names; glob characters make a pattern */
    int nchannels;
    char **streams;         /* full stream keys */
    int nstreams;
    int64_t visibility_timeout_ms;
    int batch;              /* XREADGROUP COUNT upper bound (extension) */
    int64_t linger_us;      /* pause before reading again after a short read (extension) */

    /* limits */
    int max_inflight;
    int max_group_children; /* group children (not groups) running at once */
    int64_t max_job_bytes;
    int64_t max_held_bytes; /* envelopes of the top-level jobs held (extension) */
    int64_t max_record_bytes; /* largest result record stored (extension) */

    /* jobs */
    int64_t timeout_ms;
    int64_t result_ttl;     /* seconds */
    int64_t cancel_ttl;     /* seconds a cancel is kept (extension; cancels.h) */
    struct retry_policy retry;

    /* threads */
    int threads;            /* 0: one per CPU */

    /* http */
    int http_concurrency;
    char *http_user_agent;
    int64_t http_max_bytes;
    int64_t http_max_batch_bytes;   /* text and json bodies one batch job keeps */
    bool http_allow_private;
    char *http_ca_file;     /* empty: the system store */
    int http_max_connections;
    int http_max_abandoned_lookups;     /* left running by stopped transfers */

    /* postgres */
    char *pg_conninfo;      /* empty: sql jobs are refused with unavailable */
    int pg_min_size;
    int pg_max_size;
    int64_t pg_idle_timeout_ms; /* idle connections above min_size close after this */
    int pg_pipeline;            /* queries one connection may have in flight */
    int64_t pg_pipeline_pack_us;    /* expected wait a query may queue behind */
    bool pg_allow_raw_sql;
    struct named_query *pg_queries;
    int pg_nqueries;

    /* files */
    char *files_root;       /* empty: file jobs are refused */
    int64_t files_max_bytes;

    /* admin */
    char *admin_listen;     /* "ip:port"; empty: off */
    int admin_max_connections;  /* open at once; more are closed at accept */

    /* shutdown */
    int64_t drain_ms;

    /* log */
    int log_level;          /* LOG_DEBUG..LOG_ERROR from log.h */

    /* worker */
    char *worker_name;      /* consumer and worker key name; empty: "host:pid" */
};

/* Load and validate FILE into *cfg (zeroed first). On failure returns -1, leaves
 * *cfg empty and writes one line per problem into err (NUL-terminated), each
 * like "jobd.conf:12: limits.max_inflight: must be 1..1000000, got 0". */
int config_load(const char *file, struct config *cfg, char *err, size_t errlen);

/* Fill *cfg with the built-in defaults only (used by tests and as the base of
 * config_load). Returns 0, or -1 when out of memory. */
int config_defaults(struct config *cfg);

/* Release everything *cfg owns and zero it. Safe on a zeroed struct. */
void config_free(struct config *cfg);

/* Names of settings whose value differs between OLD and NEW but that cannot
 * change without a restart (reloadable = false in the table), comma separated
 * into buf. Returns the number of such settings. */
int config_restart_needed(const struct config *old_cfg, const struct config *new_cfg,
                          char *buf, size_t buflen);

/* After a reload: move the running values of every non-reloadable setting
 * from OLD into FRESH (and FRESH's into OLD, so both stay owned), so that
 * FRESH can replace OLD whole. */
void config_keep_restart_only(struct config *fresh, struct config *old_cfg);

/* Is this intake channel a pattern (PSUBSCRIBE), not a channel name? */
bool config_is_pattern(const char *channel);

/* Names that go into key and channel names (redis.namespace, worker.name,
 * jobctl -n): nothing a SCAN pattern, a log line, a metric label or a
 * terminal (jobctl workers) would read as more than a name, so no glob
 * characters, spaces, quotes or control characters. 0 when V is such a
 * name; else -1 and WHY (N bytes) names the culprit, not echoed raw. */
int config_check_key_chars(const char *v, char *why, size_t n);

/* Look up a named query; NULL when absent. */
const struct named_query *config_query(const struct config *cfg, const char *name);

#endif
