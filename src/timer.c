/* timer.c - millisecond timers (see timer.h). */
#include <time.h>

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
