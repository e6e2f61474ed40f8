/* timer.c - millisecond timers (see timer.h). */
#include <stdlib.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "timer.h"

int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int timer_add_ms(struct event *ev, int64_t ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return evtimer_add(ev, &tv);
}

struct event *timer_new_periodic(struct event_base *base, int64_t ms, event_callback_fn cb,
                                 void *arg)
{
    struct event *ev = event_new(base, -1, EV_PERSIST, cb, arg);
    if (ev)
        timer_add_ms(ev, ms);
    return ev;
}

int64_t timer_deadline(int64_t ms)
{
    return mono_us() + ms * 1000;
}

int timer_add_until(struct event *ev, int64_t deadline)
{
    int64_t left = deadline - mono_us();
    if (left < 0)
        left = 0;
    struct timeval tv = {left / 1000000, left % 1000000};
    return evtimer_add(ev, &tv);
}

bool timer_early(struct event *ev, int64_t deadline)
{
    if (mono_us() >= deadline)
        return false;
    timer_add_until(ev, deadline);
    return true;
}

struct precise_timer {
    int fd;
    struct event *ev;
    bool armed;
    void (*cb)(void *);
    void *arg;
};

static void precise_fired(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct precise_timer *t = arg;
    uint64_t expirations;
    /* Nothing to read when it was cancelled or re-armed after epoll saw it. */
    if (read(fd, &expirations, sizeof(expirations)) != sizeof(expirations) || !t->armed)
        return;
    t->armed = false;
    t->cb(t->arg);
}

struct precise_timer *precise_timer_new(struct event_base *base, void (*cb)(void *), void *arg)
{
    struct precise_timer *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->cb = cb;
    t->arg = arg;
    t->fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (t->fd < 0 || !(t->ev = event_new(base, t->fd, EV_READ | EV_PERSIST, precise_fired, t)) ||
        event_add(t->ev, NULL) != 0) {
        precise_timer_free(t);
        return NULL;
    }
    return t;
}

void precise_timer_free(struct precise_timer *t)
{
    if (!t)
        return;
    if (t->ev)
        event_free(t->ev);
    if (t->fd >= 0)
        close(t->fd);
    free(t);
}

static int settime(struct precise_timer *t, int64_t us)
{
    struct itimerspec its = {{0, 0}, {us / 1000000, (us % 1000000) * 1000}};
    return timerfd_settime(t->fd, 0, &its, NULL);
}

int precise_timer_arm(struct precise_timer *t, int64_t us)
{
    if (us < 1)
        us = 1;     /* zero would disarm it */
    t->armed = settime(t, us) == 0;
    return t->armed ? 0 : -1;
}

void precise_timer_cancel(struct precise_timer *t)
{
    if (t->armed)
        settime(t, 0);
    t->armed = false;
}

bool precise_timer_pending(const struct precise_timer *t)
{
    return t->armed;
}
