/* daemon.h - the one struct that ties the daemon's modules together.
 *
 * There is one struct daemon per process, created in main.c and passed to
 * every module. It holds no logic of its own.
 */
#ifndef JOBD_DAEMON_H
#define JOBD_DAEMON_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"

struct event_base;
struct event;
struct threadpool;
struct redis;
struct intake;
struct runner;
struct scheduler;
struct heartbeat;
struct reclaim;
struct cancels;
struct admin;
struct pgpool;

struct daemon {
    struct event_base *base;
    struct config cfg;          /* current settings; replaced whole on SIGHUP */
    const char *config_path;
    char worker_id[160];        /* worker.name, or "host:pid" */
    int64_t started_at;         /* ms since epoch */

    struct threadpool *pool;
    struct redis *redis;
    struct intake *intake;
    struct runner *runner;
    struct cancels *cancels;    /* ids cancelled within jobs.cancel_ttl */
    struct scheduler *scheduler;
    struct heartbeat *heartbeat;
    struct reclaim *reclaim;
    struct admin *admin;
    struct pgpool *pgpool;     /* NULL when postgres.conninfo is empty */

    struct event *sig_term, *sig_int, *sig_hup;
    struct event *watchdog_timer;
    struct event *drain_timer;    /* drain_ms: then stop what is left */
    struct event *exit_check;     /* while draining: is everything written? */
    struct event *give_up_timer;  /* Redis never came back to take the outcomes */
    bool stopped_jobs;            /* runner_stop_all() done */
    bool waited_for_pool;         /* the give-up waited for pool tasks to stop */
    bool said_goodbye;            /* worker key deletion sent */
    bool ready_notified;
    int exit_code;
    bool draining;              /* SIGTERM seen: take no more jobs */
    int term_signals;           /* how many SIGTERM/SIGINT arrived */
};

/* Start everything, run the loop until shutdown, free everything. Returns the
 * exit status. */
int daemon_run(struct daemon *d);

/* Every connection is up and intake listens (first time: READY=1). */
void daemon_intake_ready(struct daemon *d);

/* Once draining, exit the loop when nothing is left in flight. */
void daemon_check_drained(struct daemon *d);

#endif
