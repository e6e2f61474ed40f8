/* log.h - levelled logging to stderr, readable in journald.
 *
 * Under systemd (JOURNAL_STREAM set) each line starts with a "<N>" priority
 * prefix that journald turns into the entry's priority; otherwise lines carry
 * a timestamp and the level name. Job messages name the job: use log_job().
 */
#ifndef JOBD_LOG_H
#define JOBD_LOG_H

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

/* Print to stderr and exit(1). Only at start-up. */
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
