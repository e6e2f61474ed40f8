/* log.h - levelled logging to stderr, readable in journald.
 *
 * Under systemd (JOURNAL_STREAM set) each line starts with a "<N>" priority
 * prefix that journald turns into the entry's priority; otherwise lines carry
 * a timestamp and the level name. Job messages name the job: use log_job().
 */
#ifndef JOBD_LOG_H
#define JOBD_LOG_H

#include <stdbool.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_NOTICE, LOG_WARN, LOG_ERROR };

void log_set_level(int level);
int log_get_level(void);
/* "debug", "info", "notice", "warn"/"warning", "error"; -1 when unknown. */
int log_level_from_name(const char *name);

void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

/* A message about one job: prefixed with "job <id>: ". */
#define log_job(level, job, fmt, ...) log_msg(level, "job %s: " fmt, (job)->id, ##__VA_ARGS__)

/* At most PER_SECOND messages of one kind a second: a flood (a server
 * raising a notice per row, anyone publishing junk on NS:control) must not
 * fill the disk. How many were left out is said (at info) once their second
 * is over: at the next log_limit_allow() or log_limit_flush(), whichever
 * comes first. Loop thread only. */
struct log_limit {
    const char *what;           /* "postgres: server notice(s)", for that line */
    int per_second;
    long long second;           /* of the counts below, on the monotonic clock */
    int logged, dropped;
};
#define LOG_LIMIT(what, per_second) {(what), (per_second), 0, 0, 0}
bool log_limit_allow(struct log_limit *l);
void log_limit_flush(struct log_limit *l);

/* Print to stderr and exit(1). Only at start-up. */
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
