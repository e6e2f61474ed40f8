/* daemon.c - the daemon's life: start-up, readiness, signals, reload and the
 * staged shutdown.
 *
 * Signals are libevent events, not real handlers, so their callbacks may do
 * anything. Shutdown runs in stages: stop intake, let running jobs finish for
 * shutdown.drain_ms, stop the rest (each goes back on its stream), wait until
 * every outcome and requeue is written, then leave the loop and exit 0.
 */
#include <event2/event.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "admin.h"
#include "cancels.h"
#include "config.h"
#include "daemon.h"
#include "executor.h"
#include "heartbeat.h"
#include "intake.h"
#include "job.h"
#include "log.h"
#include "reclaim.h"
#include "redis.h"
#include "result.h"
#include "runner.h"
#include "scheduler.h"
#include "threadpool.h"
#include "timer.h"

#define EXIT_CHECK_MS 50
#define GIVE_UP_MS 10000

/* ---- readiness ----------------------------------------------------------- */

void daemon_intake_ready(struct daemon *d)
{
    if (!d->said_goodbye)   /* a subscriber back at the end of a drain: the key stays gone */
        heartbeat_now(d->heartbeat);
    if (!d->ready_notified) {
        d->ready_notified = true;
        log_notice("ready: worker %s, %d channel(s), %d stream(s), max_inflight %d",
                   d->worker_id, d->cfg.nchannels, d->cfg.nstreams, d->cfg.max_inflight);
        sd_notify(0, "READY=1");
    } else if (d->draining) {
        /* Intake stays stopped: the subscriber is back for cancels, and for
         * the messages the exit reads up to its UNSUBSCRIBE. */
        log_info("redis subscriber back during the drain: %s",
                 intake_job_channels_paused(d->intake)
                     ? "its job channels stay left (parking failed), NS:control is heard"
                     : "pub/sub jobs heard now are parked on the stream, not run");
    } else {
        log_info("intake resumed%s", intake_job_channels_paused(d->intake)
                                         ? " (pub/sub job channels still paused)"
                                         : "");
    }
}

static void cmd_up(void *arg)
{
    struct daemon *d = arg;
    reclaim_redis_ready(d->reclaim);
    result_redis_ready(d);
    runner_redis_ready(d->runner);
    intake_cmd_ready(d->intake);
    cancels_cmd_ready(d->cancels);
}

/* ---- shutdown ------------------------------------------------------------ */

void daemon_check_drained(struct daemon *d)
{
    if (!d->draining || runner_inflight(d->runner) > 0 || !intake_idle(d->intake))
        return;
    /* Messages on their way to the subscriber are read (and parked) first;
     * the exit check comes back every EXIT_CHECK_MS. */
    if (!intake_unsubscribed(d->intake))
        return;
    if (!d->said_goodbye) {
        d->said_goodbye = true;
        heartbeat_remove(d->heartbeat);
    }
    /* Everything queued on the command connection must reach Redis first:
     * hiredis does not flush its buffer when the context is freed. */
    if (redis_ready(d->redis, REDIS_CMD) && redis_outstanding(d->redis, REDIS_CMD) > 0)
        return;
    event_base_loopexit(d->base, NULL);
}

static void exit_check_cb(evutil_socket_t fd, short what, void *arg)
{
    daemon_check_drained(arg);
}

/* Redis did not take every outcome in time: say what is left and leave. */
static void give_up(struct daemon *d)
{
    struct runner_counts c;
    runner_counts(d->runner, &c);
    log_error("shutdown: giving up: %d job outcome(s) or put-back(s) could not be written to "
              "Redis (each job was named when it was first refused), %d job(s) had not ended "
              "(still stopping, or waiting for Redis to say whether they already ran), and "
              "%d parked pub/sub job(s) were not confirmed; a job whose stream entry is still "
              "pending will be redelivered, the others (pub/sub jobs, and jobs whose entry was "
              "acknowledged with a refused retry) are lost", c.storing, c.inflight - c.storing,
              intake_parks_unanswered(d->intake));
    d->exit_code = 1;
    event_base_loopexit(d->base, NULL);
}

/* GIVE_UP_MS after the drain's end. A job still stopping on the thread pool
 * (blocked in I/O between two cancel checks: a read on a slow filesystem)
 * waits for no Redis, and its put-back can only be written from the loop:
 * leaving now would lose it (threadpool_destroy() would run its done() after
 * the loop, queueing the put-back on a connection freed unflushed). So the
 * loop waits for the pool, then gives what came back as long as the others
 * had to reach Redis. A task that never returns keeps the daemon up, as it
 * kept threadpool_destroy() joining it before; systemd's stop timeout ends
 * that. */
static void give_up_cb(evutil_socket_t fd, short what, void *arg)
{
    struct daemon *d = arg;
    int unfinished = threadpool_unfinished(d->pool);
    if (unfinished) {
        if (!d->waited_for_pool)
            log_warn("shutdown: %d thread pool task(s) still stopping %d ms after the drain "
                     "(each stops at its next cancel check: blocked in slow I/O?); waiting "
                     "for them, so that their jobs go back on their stream", unfinished,
                     GIVE_UP_MS);
        d->waited_for_pool = true;
        timer_add_ms(d->give_up_timer, EXIT_CHECK_MS);
        return;
    }
    if (d->waited_for_pool) {
        d->waited_for_pool = false;
        timer_add_ms(d->give_up_timer, GIVE_UP_MS);
        return;
    }
    give_up(d);
}

static void drain_done_cb(evutil_socket_t fd, short what, void *arg)
{
    struct daemon *d = arg;
    if (d->stopped_jobs)
        return;
    d->stopped_jobs = true;
    int left = runner_inflight(d->runner);
    if (left)
        log_notice("shutdown: stopping %d job(s) still running; they go back on their stream",
                   left);
    runner_stop_all(d->runner);
    timer_add_ms(d->give_up_timer, GIVE_UP_MS);
    daemon_check_drained(d);
}

static void begin_shutdown(struct daemon *d, int sig)
{
    d->term_signals++;
    if (d->term_signals > 1) {
        log_notice("second %s: cutting the drain short", strsignal(sig));
        drain_done_cb(-1, 0, d);
        return;
    }
    log_notice("%s: draining %d job(s) for up to %lld ms", strsignal(sig),
               runner_inflight(d->runner), (long long)d->cfg.drain_ms);
    sd_notify(0, "STOPPING=1");
    d->draining = true;
    intake_stop(d->intake);
    timer_add_ms(d->drain_timer, d->cfg.drain_ms);
    timer_add_ms(d->exit_check, EXIT_CHECK_MS);
    runner_capacity_changed(d->runner);     /* jobs queued for a slot go back */
}

/* ---- reload -------------------------------------------------------------- */

static void reload(struct daemon *d)
{
    struct config fresh;
    char err[4096];
    /* Only a daemon that said READY=1 and is not stopping may say it again:
     * before that, READY=1 would tell systemd it started while Redis may
     * still be unreachable; after STOPPING=1, that it runs again. */
    bool tell = d->ready_notified && !d->draining;
    if (tell)
        sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
                   (unsigned long long)mono_ms() * 1000ULL);
    /* Whatever the file says: an operator who granted a refused channel
     * reloads to have it heard (not a setting, so not kept from an invalid
     * file). Not while draining: the channels are being left. */
    if (!d->draining)
        intake_ask_refused(d->intake);
    result_reload();
    if (config_load(d->config_path, &fresh, err, sizeof(err))) {
        log_error("reload: %s is not valid; keeping the running configuration:\n%s",
                  d->config_path, err);
        if (tell)
            sd_notify(0, "READY=1");
        return;
    }
    char restart[1024];
    if (config_restart_needed(&d->cfg, &fresh, restart, sizeof(restart)) > 0) {
        log_warn("reload: these settings change only on restart and keep their running "
                 "values: %s", restart);
        config_keep_restart_only(&fresh, &d->cfg);
    }
    config_free(&d->cfg);
    d->cfg = fresh;
    log_set_level(d->cfg.log_level);
    log_notice("reload: configuration %s applied", d->config_path);
    /* max_inflight may have grown: start queued jobs, read more. */
    runner_capacity_changed(d->runner);
    if (tell)
        sd_notify(0, "READY=1");
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    struct daemon *d = arg;
    if (sig == SIGHUP)
        reload(d);
    else
        begin_shutdown(d, (int)sig);
}

static void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
    /* Firing at all proves the loop turns. */
    sd_notify(0, "WATCHDOG=1");
}

/* ---- start-up ------------------------------------------------------------ */

static void setup_events(struct daemon *d)
{
    d->sig_term = evsignal_new(d->base, SIGTERM, signal_cb, d);
    d->sig_int = evsignal_new(d->base, SIGINT, signal_cb, d);
    d->sig_hup = evsignal_new(d->base, SIGHUP, signal_cb, d);
    evsignal_add(d->sig_term, NULL);
    evsignal_add(d->sig_int, NULL);
    evsignal_add(d->sig_hup, NULL);
    d->drain_timer = evtimer_new(d->base, drain_done_cb, d);
    d->exit_check = event_new(d->base, -1, EV_PERSIST, exit_check_cb, d);  /* armed on SIGTERM */
    d->give_up_timer = evtimer_new(d->base, give_up_cb, d);
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0)
        /* Twice per period; at least every 1 ms (WatchdogSec below 2 ms):
         * libevent re-arms a persistent timer only when its timeout is set,
         * so a 0 ms one would ping once and never again. */
        d->watchdog_timer = timer_new_periodic(d->base, usec >= 2000 ? (int64_t)(usec / 2000) : 1,
                                               watchdog_cb, d);
}

static void free_events(struct daemon *d)
{
    struct event *evs[] = {d->sig_term,  d->sig_int,        d->sig_hup,       d->drain_timer,
                           d->exit_check, d->give_up_timer, d->watchdog_timer};
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
        if (evs[i])
            event_free(evs[i]);
}

int daemon_run(struct daemon *d)
{
    /* "host:pid" is not unique across containers that share the host's
     * name and each run jobd as pid 1: worker.name gives each its own. */
    if (*d->cfg.worker_name) {
        snprintf(d->worker_id, sizeof(d->worker_id), "%s", d->cfg.worker_name);
    } else {
        char host[100] = "localhost";
        gethostname(host, sizeof(host) - 1);
        snprintf(d->worker_id, sizeof(d->worker_id), "%s:%d", host, (int)getpid());
    }
    d->started_at = now_ms();
    srandom((unsigned)(now_ms() ^ getpid()));

    /* Ignored before any thread starts, so a peer closing a socket mid-write
     * (Redis, libcurl, libpq) is an EPIPE error in whichever thread wrote,
     * never a signal that kills the daemon. */
    signal(SIGPIPE, SIG_IGN);
    d->base = event_base_new();
    if (!d->base)
        die("cannot create the event loop");
    /* No count limit on waiting tasks: each lives inside its job, and jobs
     * are bounded already (limits.max_inflight, and group children running
     * at once by limits.max_group_children).
     * A limit of max_inflight refused a big group's children and did not
     * follow a reload that raised max_inflight. */
    d->pool = threadpool_create(d->base, d->cfg.threads, INT_MAX);
    if (!d->pool)
        die("cannot start %d worker thread(s)", d->cfg.threads);
    d->redis = redis_create(d);
    d->cancels = cancels_create(d);
    d->runner = runner_create(d);
    d->intake = intake_create(d);
    d->scheduler = scheduler_create(d);
    d->heartbeat = heartbeat_create(d);
    d->reclaim = reclaim_create(d);
    if (!d->redis || !d->cancels || !d->runner || !d->intake || !d->scheduler ||
        !d->heartbeat || !d->reclaim)
        die("out of memory at start-up");
    struct redis_hooks cmd = {cmd_up, NULL, d};
    redis_set_hooks(d->redis, REDIS_CMD, &cmd);
    int admin_off;
    d->admin = admin_create(d, &admin_off);
    if (!d->admin && !admin_off)
        die("admin.listen %s: cannot listen there (in use? set admin.listen = \"\" to turn "
            "it off)", d->cfg.admin_listen);
    if (executors_init(d))
        die("cannot initialise the job executors");
    setup_events(d);

    char endpoint[300];
    if (d->cfg.redis_path && *d->cfg.redis_path)
        snprintf(endpoint, sizeof(endpoint), "%s", d->cfg.redis_path);
    else
        snprintf(endpoint, sizeof(endpoint), "%s:%d", d->cfg.redis_host, d->cfg.redis_port);
    log_notice("jobd %s starting: worker %s, redis %s, namespace %s, %d thread(s)",
               PACKAGE_VERSION, d->worker_id, endpoint, d->cfg.ns, threadpool_size(d->pool));
    redis_start(d->redis);
    event_base_dispatch(d->base);

    /* Pool first: the loop only ends once no task is left in it (give_up_cb()
     * waits for them), so this joins idle workers; a done() run here would
     * still find the runner, but its writes would never reach Redis.
     * Then Redis, while every module is alive: freeing the contexts runs the
     * callbacks of commands still pending (the scheduler's EVAL, a reclaim
     * scan, an admin XINFO) with no reply, and they free their own state. */
    threadpool_destroy(d->pool);
    redis_free(d->redis);
    d->redis = NULL;
    admin_free(d->admin);
    heartbeat_free(d->heartbeat);
    reclaim_free(d->reclaim);
    scheduler_free(d->scheduler);
    intake_free(d->intake);
    d->intake = NULL;
    runner_free(d->runner);
    cancels_free(d->cancels);
    /* After the runner: freeing a job may still remove its transfers. */
    executors_shutdown(d);
    result_shutdown();
    free_events(d);
    event_base_free(d->base);
    log_notice("stopped");
    return d->exit_code;
}

