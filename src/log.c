/* log.c - levelled logging to stderr (see log.h). One write per line, so
 * lines from the loop and pool threads never interleave. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static int current_level = LOG_INFO;
static int journal = -1;    /* stderr goes to journald: use <N> prefixes */

static const char *const level_names[] = {"DEBUG", "INFO", "NOTICE", "WARN", "ERROR"};
static const char level_prio[] = {'7', '6', '5', '4', '3'};

void log_set_level(int level)
{
    if (level >= LOG_DEBUG && level <= LOG_ERROR)
        current_level = level;
}

int log_get_level(void)
{
    return current_level;
}

int log_level_from_name(const char *name)
{
    static const struct {
        const char *name;
        int level;
    } names[] = {{"debug", LOG_DEBUG}, {"info", LOG_INFO},    {"notice", LOG_NOTICE},
                 {"warn", LOG_WARN},   {"warning", LOG_WARN}, {"error", LOG_ERROR}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (!strcasecmp(name, names[i].name))
            return names[i].level;
    return -1;
}

static void vlog(int level, const char *fmt, va_list ap)
{
    char line[4096];
    size_t n;
    if (journal < 0)
        journal = getenv("JOURNAL_STREAM") != NULL;
    if (journal) {
        n = (size_t)snprintf(line, sizeof(line), "<%c>", level_prio[level]);
    } else {
        struct timeval tv;
        struct tm tm;
        gettimeofday(&tv, NULL);
        gmtime_r(&tv.tv_sec, &tm);
        n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
        n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03dZ %s ", (int)(tv.tv_usec / 1000),
                              level_names[level]);
    }
    size_t start = n;
    int m = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    n = m < 0 ? n : (n + (size_t)m >= sizeof(line) - 1 ? sizeof(line) - 2 : n + (size_t)m);
    /* Messages quote what producers sent (a type, a control command, an
     * error text): a newline there would start a forged line of any level
     * (with journald's "<N>" prefix, of any priority). */
    for (size_t i = start; i < n; i++)
        if (line[i] == '\n' || line[i] == '\r')
            line[i] = ' ';
        else if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
            line[i] = '?';
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}

void log_msg(int level, const char *fmt, ...)
{
    if (level < current_level)
        return;
    if (level > LOG_ERROR)
        level = LOG_ERROR;
    va_list ap;
    va_start(ap, fmt);
    vlog(level, fmt, ap);
    va_end(ap);
}

void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("jobd: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

void log_limit_flush(struct log_limit *l)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long long second = (long long)ts.tv_sec;
    if (second == l->second)
        return;
    if (l->dropped)
        log_info("%s: %d not logged (more than %d a second)", l->what, l->dropped,
                 l->per_second);
    l->second = second;
    l->logged = l->dropped = 0;
}

bool log_limit_allow(struct log_limit *l)
{
    log_limit_flush(l);
    if (l->logged >= l->per_second) {
        l->dropped++;
        return false;
    }
    l->logged++;
    return true;
}
